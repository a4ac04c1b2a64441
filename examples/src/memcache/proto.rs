//! Incremental parser of memcached's text protocol and meta protocol (as of memcached 1.6).
//!
//! [`Parser::next`] looks at the unconsumed input and returns how many bytes it consumed and a
//! [`Step`]: a complete command borrowing from the input, an error line to send, a request to
//! close the connection, or "need more input". It never allocates in proportion to a length
//! the client declared: a data block that cannot fit the item size limit is refused at once
//! (`SERVER_ERROR object too large for cache`) and its bytes are discarded as they arrive.
//!
//! Rules follow memcached: tokens are separated by spaces, lines end with `\n` (an `\r`
//! before it is dropped), data blocks end with `\r\n`, keys are at most 250 bytes, a line
//! longer than 2048 bytes without a newline closes the connection (after
//! `CLIENT_ERROR line too long`) unless it is a `get`/`gets` (multi-gets may be long, up to
//! [`MULTIGET_LINE_MAX`]). Errors of text commands that carry `noreply` are not sent, as in
//! memcached; errors of meta commands always are.

use super::memstore::item_size;
use super::store::{SetMode, KEY_MAX};
use std::borrow::Cow;

/// Longest command line accepted without a newline (memcached's 2048).
pub const LINE_MAX: usize = 2048;
/// Longest `get`/`gets` line accepted.
pub const MULTIGET_LINE_MAX: usize = 1 << 20;
/// Most tokens memcached looks at on a line (its `MAX_TOKENS` minus the terminator).
const MAX_TOKENS: usize = 23;
/// memcached's `MFLAG_MAX_OPT_LENGTH`: a meta command has fewer tokens than this (the
/// terminator counted).
const META_MAX_TOKENS: usize = 20;
/// Longest opaque token.
const OPAQUE_MAX: usize = 32;

/// Error strings.
pub mod err {
    /// Unknown command or wrong number of tokens.
    pub const ERROR: &str = "ERROR";
    /// Malformed arguments.
    pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
    /// A data block not followed by `\r\n`.
    pub const BAD_CHUNK: &str = "CLIENT_ERROR bad data chunk";
    /// A line over the limit (the connection closes).
    pub const LINE_TOO_LONG: &str = "CLIENT_ERROR line too long";
    /// A value that cannot fit the item size limit.
    pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";
    /// Bad exptime of touch/gat/flush_all.
    pub const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument";
    /// Bad incr/decr delta.
    pub const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument";
    /// delete with extra arguments.
    pub const DELETE_USAGE: &str =
        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";
    /// Meta flag repeated.
    pub const DUP_FLAG: &str = "CLIENT_ERROR duplicate flag";
    /// Unknown meta flag.
    pub const INVALID_FLAG: &str = "CLIENT_ERROR invalid flag";
    /// md/ma flag errors.
    pub const INVALID_OR_DUP: &str = "CLIENT_ERROR invalid or duplicate flag";
    /// Bad numeric meta token.
    pub const BAD_TOKEN: &str = "CLIENT_ERROR bad token in command line format";
    /// Base64 key that does not decode.
    pub const BAD_KEY_B64: &str = "CLIENT_ERROR error decoding key";
    /// Opaque over 32 bytes.
    pub const OPAQUE_TOO_LONG: &str = "CLIENT_ERROR opaque token too long";
    /// M token not one character.
    pub const BAD_M_LEN: &str = "CLIENT_ERROR incorrect length for M token";
    /// ms mode unknown.
    pub const BAD_MS_MODE: &str = "CLIENT_ERROR invalid mode for ms M token";
    /// ma mode unknown.
    pub const BAD_MA_MODE: &str = "CLIENT_ERROR invalid mode for ma M token";
    /// Bad J token.
    pub const BAD_INITIAL: &str = "CLIENT_ERROR invalid numeric initial value";
    /// Bad D token.
    pub const BAD_META_DELTA: &str = "CLIENT_ERROR invalid numeric delta value";
    /// mg with too many flags.
    pub const MG_TOO_MANY: &str = "CLIENT_ERROR options flags are too long";
    /// ms/md/ma with too many flags.
    pub const META_TOO_MANY: &str = "CLIENT_ERROR options flags too long";
    /// incr/decr on a non-number.
    pub const NON_NUMERIC: &str = "CLIENT_ERROR cannot increment or decrement non-numeric value";
    /// shutdown without -A.
    pub const SHUTDOWN_DISABLED: &str = "ERROR: shutdown not enabled";
    /// shutdown with an unknown argument.
    pub const SHUTDOWN_MODE: &str = "CLIENT_ERROR invalid shutdown mode";
    /// Connection limit reached.
    pub const TOO_MANY_CONNS: &str = "ERROR Too many open connections";
}

/// Options of a meta command, parsed from its flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaOpts {
    /// `b`: the key is base64.
    pub base64: bool,
    /// `q`: quiet mode.
    pub quiet: bool,
    /// `v`: return the value.
    pub value: bool,
    /// `u`: do not bump / mark fetched.
    pub no_update: bool,
    /// `N`: autovivify with this exptime.
    pub vivify: Option<i64>,
    /// `T`: new exptime.
    pub ttl: Option<i64>,
    /// `F`: client flags (ms).
    pub client_flags: u32,
    /// `C`: compare CAS.
    pub cas: Option<u64>,
    /// `M`: mode character.
    pub mode: Option<u8>,
    /// `J`: initial value (ma).
    pub initial: u64,
    /// `D`: delta (ma), default 1.
    pub delta: u64,
}

/// A meta command's key and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The key (base64-decoded when `b` was given).
    pub key: Cow<'a, [u8]>,
    /// The flag tokens as sent, space separated, in order (for the reply flags).
    pub flags: &'a [u8],
    /// Parsed options.
    pub opts: MetaOpts,
}

impl<'a> Meta<'a> {
    /// The flag tokens in request order.
    pub fn flag_tokens(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        tokens(self.flags)
    }
}

/// A parsed command. Slices borrow from the input buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// get/gets/gat/gats.
    Get {
        /// The keys, space separated (see [`tokens`]); each at most 250 bytes.
        keys: &'a [u8],
        /// gets/gats: include the CAS.
        cas: bool,
        /// gat/gats: the client's exptime.
        touch: Option<i64>,
    },
    /// set/add/replace/append/prepend/cas.
    Store {
        /// Mode.
        mode: SetMode,
        /// Key.
        key: &'a [u8],
        /// Client flags.
        flags: u32,
        /// Client exptime.
        exptime: i64,
        /// `cas` command's unique.
        cas: Option<u64>,
        /// Value.
        data: &'a [u8],
        /// noreply.
        noreply: bool,
    },
    /// A store whose value cannot fit; its data is being discarded.
    TooLarge {
        /// Key.
        key: Cow<'a, [u8]>,
        /// Remove the existing item (memcached does for `set` and `ms`).
        unlink: bool,
        /// Do not send the error (text command with noreply).
        quiet: bool,
    },
    /// delete.
    Delete {
        /// Key.
        key: &'a [u8],
        /// noreply.
        noreply: bool,
    },
    /// incr/decr.
    Arith {
        /// incr (true) or decr.
        incr: bool,
        /// Key.
        key: &'a [u8],
        /// Delta.
        delta: u64,
        /// noreply.
        noreply: bool,
    },
    /// touch.
    Touch {
        /// Key.
        key: &'a [u8],
        /// Client exptime.
        exptime: i64,
        /// noreply.
        noreply: bool,
    },
    /// flush_all.
    FlushAll {
        /// Client delay (0 or negative: now).
        delay: i64,
        /// noreply.
        noreply: bool,
    },
    /// version.
    Version,
    /// verbosity.
    Verbosity {
        /// Level.
        level: u32,
        /// noreply.
        noreply: bool,
    },
    /// `stats [group]`.
    Stats {
        /// The first argument, if any.
        group: Option<&'a [u8]>,
    },
    /// quit.
    Quit,
    /// `shutdown [graceful]`.
    Shutdown {
        /// Graceful mode, or None if the argument was not understood.
        graceful: Option<bool>,
    },
    /// mg.
    Mg(Meta<'a>),
    /// ms.
    Ms(Meta<'a>, &'a [u8]),
    /// md.
    Md(Meta<'a>),
    /// ma.
    Ma(Meta<'a>),
    /// mn.
    Mn,
    /// me.
    Me {
        /// Key (decoded).
        key: Cow<'a, [u8]>,
        /// The key was base64.
        base64: bool,
    },
}

/// One parsing step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Not enough input for the next command.
    NeedMore,
    /// Some input was consumed without a command or reply; call again.
    Continue,
    /// A command to execute.
    Cmd(Command<'a>),
    /// Send this error line (without CRLF).
    Error(&'static str),
    /// Send this line, if any, and close the connection.
    Close(Option<&'static str>),
}

/// Parser state carried between reads.
#[derive(Clone, Debug)]
pub struct Parser {
    item_size_max: usize,
    /// Bytes of an oversized data block still to discard.
    swallow: usize,
}

/// Space-separated non-empty tokens.
pub fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

fn digits(t: &[u8]) -> Option<&[u8]> {
    let t = t.strip_prefix(b"+").unwrap_or(t);
    (!t.is_empty() && t.len() <= 40 && t.iter().all(u8::is_ascii_digit)).then_some(t)
}

/// Unsigned 64-bit decimal (an optional `+`); no sign, no overflow.
pub fn parse_u64(t: &[u8]) -> Option<u64> {
    let d = digits(t)?;
    let mut v: u64 = 0;
    for &b in d {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Unsigned 32-bit decimal.
pub fn parse_u32(t: &[u8]) -> Option<u32> {
    parse_u64(t).and_then(|v| u32::try_from(v).ok())
}

/// Signed 32-bit decimal (memcached's `safe_strtol`), widened.
pub fn parse_i32(t: &[u8]) -> Option<i64> {
    let (neg, rest) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    if rest.first() == Some(&b'+') && neg {
        return None;
    }
    let v = i64::try_from(parse_u64(rest)?).ok()?;
    let v = if neg { -v } else { v };
    (i64::from(i32::MIN)..=i64::from(i32::MAX))
        .contains(&v)
        .then_some(v)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8], out: &mut Vec<u8>) {
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if c.len() > 2 {
            B64[n as usize & 63]
        } else {
            b'='
        });
    }
}

/// Decodes standard base64 with padding; None if malformed or empty.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&x| x == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let nchunks = s.len() / 4;
    for (i, c) in s.chunks(4).enumerate() {
        let last = i + 1 == nchunks;
        let pad = c.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &b in &c[..4 - pad] {
            n = (n << 6) | val(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    (!out.is_empty()).then_some(out)
}

fn text_err(noreply: bool, msg: &'static str) -> Step<'static> {
    if noreply {
        Step::Continue
    } else {
        Step::Error(msg)
    }
}

impl Parser {
    /// A parser for a store whose item size limit is `item_size_max`.
    pub fn new(item_size_max: usize) -> Parser {
        Parser {
            item_size_max,
            swallow: 0,
        }
    }

    /// True while the parser is discarding an oversized data block.
    pub fn swallowing(&self) -> bool {
        self.swallow > 0
    }

    /// Parses the next command at the start of `buf` (the unconsumed input). Returns the
    /// bytes consumed (drop them before the next call) and the step.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> (usize, Step<'a>) {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            self.swallow -= n;
            return if self.swallow > 0 || n == buf.len() {
                (n, Step::NeedMore)
            } else {
                (n, Step::Continue)
            };
        }
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() <= LINE_MAX {
                return (0, Step::NeedMore);
            }
            let lead = buf.iter().take_while(|&&b| b == b' ').count();
            let rest = &buf[lead..];
            if lead <= 100
                && (rest.starts_with(b"get ") || rest.starts_with(b"gets "))
                && buf.len() <= MULTIGET_LINE_MAX
            {
                return (0, Step::NeedMore);
            }
            return (buf.len(), Step::Close(Some(err::LINE_TOO_LONG)));
        };
        let mut line = &buf[..nl];
        if line.len() > 1 && line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        let after = nl + 1;
        self.command(buf, line, after)
    }

    fn command<'a>(&mut self, buf: &'a [u8], line: &'a [u8], after: usize) -> (usize, Step<'a>) {
        let mut toks: [&'a [u8]; MAX_TOKENS] = [&[]; MAX_TOKENS];
        let mut n = 0;
        for t in tokens(line) {
            if n == MAX_TOKENS {
                // memcached lumps the rest into one token; any command then fails its
                // token count (multi-gets re-read the line).
                n += 1;
                break;
            }
            toks[n] = t;
            n += 1;
        }
        let ntok = n.min(MAX_TOKENS);
        let t = &toks[..ntok];
        if n == 0 || t[0].len() < 2 {
            return (after, Step::Error(err::ERROR));
        }
        let last_noreply = t[ntok - 1] == b"noreply";
        let step = match t[0] {
            b"get" | b"gets" | b"gat" | b"gats" => {
                let cmd = t[0];
                let touch = cmd.starts_with(b"gat");
                let cas = cmd.ends_with(b"s");
                if ntok < 2 {
                    return (after, Step::Error(err::ERROR));
                }
                // The keys are everything after the command (and exptime) token.
                let mut rest = skip_token(line);
                let mut exptime = None;
                if touch {
                    match parse_i32(t[1]) {
                        Some(e) => exptime = Some(e),
                        None => return (after, Step::Error(err::BAD_EXPTIME)),
                    }
                    rest = skip_token(rest);
                }
                if tokens(rest).any(|k| k.len() > KEY_MAX) {
                    return (after, Step::Error(err::BAD_FORMAT));
                }
                Step::Cmd(Command::Get {
                    keys: rest,
                    cas,
                    touch: exptime,
                })
            }
            b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
                return self.text_store(buf, t, n, after, last_noreply);
            }
            b"delete" => {
                if !(2..=4).contains(&n) {
                    return (after, Step::Error(err::ERROR));
                }
                if n > 2 {
                    let zero = t[2] == b"0";
                    let valid =
                        (n == 3 && (zero || last_noreply)) || (n == 4 && zero && last_noreply);
                    if !valid {
                        return (after, text_err(last_noreply, err::DELETE_USAGE));
                    }
                }
                if t[1].len() > KEY_MAX {
                    return (after, text_err(last_noreply, err::BAD_FORMAT));
                }
                Step::Cmd(Command::Delete {
                    key: t[1],
                    noreply: last_noreply,
                })
            }
            b"incr" | b"decr" => {
                if n != 3 && n != 4 {
                    return (after, Step::Error(err::ERROR));
                }
                if t[1].len() > KEY_MAX {
                    return (after, text_err(last_noreply, err::BAD_FORMAT));
                }
                match parse_u64(t[2]) {
                    None => text_err(last_noreply, err::BAD_DELTA),
                    Some(delta) => Step::Cmd(Command::Arith {
                        incr: t[0] == b"incr",
                        key: t[1],
                        delta,
                        noreply: last_noreply,
                    }),
                }
            }
            b"touch" => {
                if n != 3 && n != 4 {
                    return (after, Step::Error(err::ERROR));
                }
                if t[1].len() > KEY_MAX {
                    return (after, text_err(last_noreply, err::BAD_FORMAT));
                }
                match parse_i32(t[2]) {
                    None => text_err(last_noreply, err::BAD_EXPTIME),
                    Some(exptime) => Step::Cmd(Command::Touch {
                        key: t[1],
                        exptime,
                        noreply: last_noreply,
                    }),
                }
            }
            b"flush_all" => {
                if n > 3 {
                    return (after, Step::Error(err::ERROR));
                }
                let mut delay = 0;
                if n != if last_noreply { 2 } else { 1 } {
                    match parse_i32(t[1]) {
                        Some(d) => delay = d,
                        None => return (after, text_err(last_noreply, err::BAD_EXPTIME)),
                    }
                }
                Step::Cmd(Command::FlushAll {
                    delay,
                    noreply: last_noreply,
                })
            }
            b"version" => Step::Cmd(Command::Version),
            b"quit" => Step::Cmd(Command::Quit),
            b"verbosity" => {
                if n != 2 && n != 3 {
                    return (after, Step::Error(err::ERROR));
                }
                match parse_u32(t[1]) {
                    None => text_err(last_noreply, err::BAD_FORMAT),
                    Some(level) => Step::Cmd(Command::Verbosity {
                        level,
                        noreply: last_noreply,
                    }),
                }
            }
            b"stats" => Step::Cmd(Command::Stats {
                group: t.get(1).copied(),
            }),
            b"shutdown" => Step::Cmd(Command::Shutdown {
                graceful: match n {
                    1 => Some(false),
                    2 if t[1] == b"graceful" => Some(true),
                    _ => None,
                },
            }),
            [b'm', c] => return self.meta(buf, *c, t, n, after),
            _ => {
                if t[ntok - 1].starts_with(b"HTTP/") {
                    Step::Close(None)
                } else {
                    Step::Error(err::ERROR)
                }
            }
        };
        (after, step)
    }

    fn text_store<'a>(
        &mut self,
        buf: &'a [u8],
        t: &[&'a [u8]],
        n: usize,
        after: usize,
        noreply: bool,
    ) -> (usize, Step<'a>) {
        let is_cas = t[0] == b"cas";
        let want = if is_cas { 6 } else { 5 };
        if n != want && n != want + 1 {
            return (after, Step::Error(err::ERROR));
        }
        let mode = match t[0] {
            b"add" => SetMode::Add,
            b"replace" => SetMode::Replace,
            b"append" => SetMode::Append,
            b"prepend" => SetMode::Prepend,
            _ => SetMode::Set,
        };
        let key = t[1];
        if key.len() > KEY_MAX {
            return (after, text_err(noreply, err::BAD_FORMAT));
        }
        let (Some(flags), Some(exptime), Some(vlen)) =
            (parse_u32(t[2]), parse_i32(t[3]), parse_i32(t[4]))
        else {
            return (after, text_err(noreply, err::BAD_FORMAT));
        };
        let cas = if is_cas {
            match parse_u64(t[5]) {
                Some(c) => Some(c),
                None => return (after, text_err(noreply, err::BAD_FORMAT)),
            }
        } else {
            None
        };
        if vlen < 0 {
            return (after, text_err(noreply, err::BAD_FORMAT));
        }
        let vlen = vlen as usize;
        if item_size(key.len(), vlen) > self.item_size_max {
            self.swallow = vlen + 2;
            return (
                after,
                Step::Cmd(Command::TooLarge {
                    key: Cow::Borrowed(key),
                    unlink: mode == SetMode::Set && !is_cas,
                    quiet: noreply,
                }),
            );
        }
        let end = after + vlen + 2;
        if buf.len() < end {
            return (0, Step::NeedMore);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return (end, text_err(noreply, err::BAD_CHUNK));
        }
        (
            end,
            Step::Cmd(Command::Store {
                mode,
                key,
                flags,
                exptime,
                cas,
                data: &buf[after..end - 2],
                noreply,
            }),
        )
    }

    fn meta<'a>(
        &mut self,
        buf: &'a [u8],
        c: u8,
        t: &[&'a [u8]],
        n: usize,
        after: usize,
    ) -> (usize, Step<'a>) {
        let e = |m| (after, Step::Error(m));
        match c {
            b'n' => return (after, Step::Cmd(Command::Mn)),
            b'e' => {
                if n < 2 || t[1].len() > KEY_MAX {
                    return e(err::BAD_FORMAT);
                }
                let base64 = n >= 3 && t[2] == b"b";
                let key = if base64 {
                    match base64_decode(t[1]) {
                        Some(k) => Cow::Owned(k),
                        None => return e(err::BAD_FORMAT),
                    }
                } else {
                    Cow::Borrowed(t[1])
                };
                return (after, Step::Cmd(Command::Me { key, base64 }));
            }
            b'g' | b's' | b'd' | b'a' => {}
            _ => return e(err::ERROR),
        }
        if n < 2 {
            return e(err::ERROR);
        }
        if t[1].len() > KEY_MAX {
            return e(err::BAD_FORMAT);
        }
        // ms: the data length comes before the flags.
        let mut vlen = None;
        if c == b's' {
            if n == 2 {
                return e(err::BAD_FORMAT);
            }
            if n + 1 > META_MAX_TOKENS {
                return e(err::META_TOO_MANY);
            }
            match parse_i32(t[2]) {
                Some(v) if v >= 0 => vlen = Some(v as usize),
                _ => return e(err::BAD_FORMAT),
            }
        } else if n + 1 > META_MAX_TOKENS {
            return e(if c == b'g' {
                err::MG_TOO_MANY
            } else {
                err::META_TOO_MANY
            });
        }
        let first_flag = if c == b's' { 3 } else { 2 };
        let flags_start = t
            .get(first_flag)
            .map(|f| f.as_ptr() as usize - buf.as_ptr() as usize)
            .unwrap_or(after);
        let line_end = t[n - 1].as_ptr() as usize - buf.as_ptr() as usize + t[n - 1].len();
        let flags = &buf[flags_start.min(line_end)..line_end];
        let parsed = parse_meta_flags(t[1], &t[first_flag..n]);
        let meta = match (parsed, c) {
            (Ok(m), _) => Meta {
                key: m.0,
                flags,
                opts: m.1,
            },
            (Err(_), b'd' | b'a') => return e(err::INVALID_OR_DUP),
            (Err(msg), b's') => {
                self.swallow = vlen.unwrap_or(0) + 2;
                return e(msg);
            }
            (Err(msg), _) => return e(msg),
        };
        match c {
            b'g' => (after, Step::Cmd(Command::Mg(meta))),
            b'd' => (after, Step::Cmd(Command::Md(meta))),
            b'a' => {
                if !matches!(
                    meta.opts.mode,
                    None | Some(b'I' | b'i' | b'+' | b'D' | b'd' | b'-')
                ) {
                    return e(err::BAD_MA_MODE);
                }
                (after, Step::Cmd(Command::Ma(meta)))
            }
            _ => {
                let vlen = vlen.unwrap_or(0);
                if !matches!(
                    meta.opts.mode,
                    None | Some(
                        b'E' | b'e' | b'A' | b'a' | b'P' | b'p' | b'R' | b'r' | b'S' | b's'
                    )
                ) {
                    self.swallow = vlen + 2;
                    return e(err::BAD_MS_MODE);
                }
                if item_size(meta.key.len(), vlen) > self.item_size_max {
                    self.swallow = vlen + 2;
                    return (
                        after,
                        Step::Cmd(Command::TooLarge {
                            key: meta.key,
                            unlink: true,
                            quiet: false,
                        }),
                    );
                }
                let end = after + vlen + 2;
                if buf.len() < end {
                    return (0, Step::NeedMore);
                }
                if &buf[end - 2..end] != b"\r\n" {
                    return (end, Step::Error(err::BAD_CHUNK));
                }
                (end, Step::Cmd(Command::Ms(meta, &buf[after..end - 2])))
            }
        }
    }
}

/// The line after its first token.
fn skip_token(s: &[u8]) -> &[u8] {
    let s = &s[s.iter().take_while(|&&b| b == b' ').count()..];
    let n = s.iter().take_while(|&&b| b != b' ').count();
    &s[n..]
}

/// memcached's `_meta_flag_preparse`.
fn parse_meta_flags<'a>(
    key: &'a [u8],
    flags: &[&'a [u8]],
) -> Result<(Cow<'a, [u8]>, MetaOpts), &'static str> {
    let mut o = MetaOpts {
        delta: 1,
        ..MetaOpts::default()
    };
    let mut seen = [false; 128];
    let mut error: Option<&'static str> = None;
    let mut key = Cow::Borrowed(key);
    for f in flags {
        let c = f[0];
        if c >= 127 || seen[c as usize] {
            return Err(err::DUP_FLAG);
        }
        seen[c as usize] = true;
        let arg = &f[1..];
        match c {
            b'b' => {
                o.base64 = true;
                match base64_decode(&key) {
                    Some(k) => key = Cow::Owned(k),
                    None => error = Some(err::BAD_KEY_B64),
                }
            }
            b'N' => match parse_i32(arg) {
                Some(v) => o.vivify = Some(v),
                None => error = Some(err::BAD_TOKEN),
            },
            b'T' => match parse_i32(arg) {
                Some(v) => o.ttl = Some(v),
                None => error = Some(err::BAD_TOKEN),
            },
            b'R' => {
                if parse_i32(arg).is_none() {
                    error = Some(err::BAD_TOKEN);
                }
            }
            b'O' => {
                if f.len() > OPAQUE_MAX {
                    error = Some(err::OPAQUE_TOO_LONG);
                }
            }
            b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'l' | b'h' => {}
            b'v' => o.value = true,
            b'u' => o.no_update = true,
            b'q' => o.quiet = true,
            b'F' => match parse_u32(arg) {
                Some(v) => o.client_flags = v,
                None => error = Some(error.unwrap_or(err::BAD_FORMAT)),
            },
            b'C' => match parse_u64(arg) {
                Some(v) => o.cas = Some(v),
                None => error = Some(err::BAD_TOKEN),
            },
            b'M' => {
                if f.len() != 2 {
                    error = Some(err::BAD_M_LEN);
                } else {
                    o.mode = Some(f[1]);
                }
            }
            b'J' => match parse_u64(arg) {
                Some(v) => o.initial = v,
                None => error = Some(err::BAD_INITIAL),
            },
            b'D' => match parse_u64(arg) {
                Some(v) => o.delta = v,
                None => error = Some(err::BAD_META_DELTA),
            },
            // Stale items (I) are not supported by the stores.
            _ => return Err(err::INVALID_FLAG),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok((key, o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> (usize, Step<'_>) {
        Parser::new(1024 * 1024).next(input)
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_i32(b"-5"), Some(-5));
        assert_eq!(parse_i32(b"2147483648"), None);
        assert_eq!(parse_i32(b"-2147483648"), Some(-2147483648));
        assert_eq!(parse_i32(b"-"), None);
    }

    #[test]
    fn base64_round_trip() {
        for s in [&b"f"[..], b"fo", b"foo", b"foob", b"\x00\xff\x10"] {
            let mut e = Vec::new();
            base64_encode(s, &mut e);
            assert_eq!(base64_decode(&e).as_deref(), Some(s));
        }
        assert_eq!(base64_decode(b"Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(base64_decode(b"Zm9"), None);
        assert_eq!(base64_decode(b"Z=9v"), None);
    }

    #[test]
    fn partial_set_needs_more() {
        let full = b"set k 1 2 3\r\nabc\r\n";
        for cut in 0..full.len() {
            assert_eq!(one(&full[..cut]), (0, Step::NeedMore), "cut {cut}");
        }
        let (n, s) = one(full);
        assert_eq!(n, full.len());
        assert!(matches!(
            s,
            Step::Cmd(Command::Store {
                data: b"abc",
                flags: 1,
                exptime: 2,
                ..
            })
        ));
    }

    #[test]
    fn errors() {
        assert_eq!(one(b"bogus\r\n").1, Step::Error(err::ERROR));
        assert_eq!(one(b"\r\n").1, Step::Error(err::ERROR));
        assert_eq!(one(b"get\r\n").1, Step::Error(err::ERROR));
        assert_eq!(one(b"set k 0 0\r\n").1, Step::Error(err::ERROR));
        assert_eq!(one(b"set k x 0 1\r\n").1, Step::Error(err::BAD_FORMAT));
        assert_eq!(one(b"set k 0 0 -1\r\n").1, Step::Error(err::BAD_FORMAT));
        assert_eq!(one(b"set k 0 0 -1 noreply\r\n").1, Step::Continue);
        assert_eq!(
            one(b"set k 0 0 1\r\nab\r\n"),
            (16, Step::Error(err::BAD_CHUNK))
        );
        assert_eq!(one(b"incr k -1\r\n").1, Step::Error(err::BAD_DELTA));
        assert_eq!(one(b"touch k x\r\n").1, Step::Error(err::BAD_EXPTIME));
        assert_eq!(one(b"delete k 5\r\n").1, Step::Error(err::DELETE_USAGE));
        assert!(matches!(
            one(b"delete k 0\r\n").1,
            Step::Cmd(Command::Delete { noreply: false, .. })
        ));
        assert!(matches!(
            one(b"delete k 0 noreply\r\n").1,
            Step::Cmd(Command::Delete { noreply: true, .. })
        ));
        let long_key = format!("get {}\r\n", "k".repeat(251));
        assert_eq!(one(long_key.as_bytes()).1, Step::Error(err::BAD_FORMAT));
        assert_eq!(one(b"GET / HTTP/1.1\r\n").1, Step::Close(None));
        assert_eq!(one(b"mg k zz\r\n").1, Step::Error(err::INVALID_FLAG));
        assert_eq!(one(b"mg k v v\r\n").1, Step::Error(err::DUP_FLAG));
        assert_eq!(one(b"md k v v\r\n").1, Step::Error(err::INVALID_OR_DUP));
        assert_eq!(one(b"mx k\r\n").1, Step::Error(err::ERROR));
    }

    #[test]
    fn line_too_long() {
        let junk = vec![b'x'; LINE_MAX + 1];
        assert_eq!(one(&junk).1, Step::Close(Some(err::LINE_TOO_LONG)));
        let mut get = b"get ".to_vec();
        get.resize(LINE_MAX + 10, b'k');
        assert_eq!(one(&get), (0, Step::NeedMore));
    }

    #[test]
    fn too_large_is_swallowed() {
        let mut p = Parser::new(1024);
        let (n, s) = p.next(b"set k 0 0 5000\r\n");
        assert_eq!(n, 16);
        assert!(matches!(
            s,
            Step::Cmd(Command::TooLarge {
                unlink: true,
                quiet: false,
                ..
            })
        ));
        assert!(p.swallowing());
        let data = vec![b'z'; 3000];
        assert_eq!(p.next(&data), (3000, Step::NeedMore));
        let mut rest = vec![b'z'; 2000];
        rest.extend_from_slice(b"\r\nget k\r\n");
        assert_eq!(p.next(&rest), (2002, Step::Continue));
        assert!(matches!(
            p.next(&rest[2002..]).1,
            Step::Cmd(Command::Get { .. })
        ));
    }

    #[test]
    fn meta_parse() {
        let (_, s) = one(b"mg Zm9v b k v O123 T30\r\n");
        let Step::Cmd(Command::Mg(m)) = s else {
            panic!("{s:?}")
        };
        assert_eq!(&*m.key, b"foo");
        assert_eq!(m.flags, b"b k v O123 T30");
        assert_eq!(m.opts.ttl, Some(30));
        assert!(m.opts.value && m.opts.base64);
        let (n, s) = one(b"ms k 2 T0 F5 MA\r\nhi\r\n");
        assert_eq!(n, 21);
        let Step::Cmd(Command::Ms(m, d)) = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (d, m.opts.client_flags, m.opts.mode),
            (&b"hi"[..], 5, Some(b'A'))
        );
        let mut p = Parser::new(1024);
        assert_eq!(
            p.next(b"ms k 2 MX\r\nhi\r\nmn\r\n"),
            (11, Step::Error(err::BAD_MS_MODE))
        );
        assert_eq!(p.next(b"hi\r\nmn\r\n"), (4, Step::Continue));
        assert_eq!(p.next(b"mn\r\n"), (4, Step::Cmd(Command::Mn)));
    }
}
