//! Incremental parser of RESP2 requests and the reply encoder.
//!
//! Requests are either arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what client
//! libraries send) or inline commands (`PING\r\n`, what telnet and `redis-cli` in some modes
//! send: words separated by blanks, with `"..."` (escapes `\n \r \t \b \a \\ \" \xHH`) and
//! `'...'` (escape `\'`) quoting).
//!
//! [`Parser::next`] looks at the unconsumed input and returns how many bytes it consumed and a
//! [`Step`]. A partially received array keeps its progress in the parser, so a large command
//! arriving in many reads is not re-scanned from the start each time; the caller must then
//! present the same unconsumed bytes (plus any new ones) on the next call. Nothing is allocated
//! in proportion to a length the client declared: a bulk string is only ever as big as the
//! bytes that actually arrived, and a declared length over [`MAX_BULK`] is a protocol error.
//!
//! Protocol errors are answered `-ERR Protocol error: ...` and the connection is closed, as
//! Redis does.

use std::borrow::Cow;

/// Largest bulk string accepted (Redis' default `proto-max-bulk-len`, 512 MiB).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most elements of a request array (Redis accepts up to `i32::MAX`).
pub const MAX_ARGS: usize = i32::MAX as usize;
/// Longest inline command, and longest `*`/`$` header line, without a newline (64 KiB).
pub const INLINE_MAX: usize = 64 * 1024;

/// Protocol error texts (sent as `-ERR Protocol error: <text>`).
pub mod perr {
    /// The `*` header is not a number or out of range.
    pub const MULTIBULK_LEN: &str = "invalid multibulk length";
    /// A `$` header is not a number or out of range.
    pub const BULK_LEN: &str = "invalid bulk length";
    /// An inline command over [`super::INLINE_MAX`].
    pub const INLINE_TOO_BIG: &str = "too big inline request";
    /// A `*` header line over [`super::INLINE_MAX`].
    pub const MBULK_COUNT_TOO_BIG: &str = "too big mbulk count string";
    /// A `$` header line over [`super::INLINE_MAX`].
    pub const BULK_COUNT_TOO_BIG: &str = "too big bulk count string";
    /// Bad quoting in an inline command.
    pub const UNBALANCED_QUOTES: &str = "unbalanced quotes in request";
    /// A bulk string not followed by `\r\n`.
    pub const BULK_TERMINATOR: &str = "invalid bulk terminator";
}

/// Outcome of one [`Parser::next`] call.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// The input holds no complete command yet; nothing to do until more bytes arrive.
    NeedMore,
    /// An empty command (`*0`, `*-1`, a blank inline line): nothing to execute.
    Skip,
    /// A command: its name and arguments.
    Cmd(Vec<Cow<'a, [u8]>>),
    /// A protocol error: send `-ERR Protocol error: <text>` and close the connection. The
    /// `'$'` expectation error carries the byte found.
    Error(ProtoError),
}

/// A protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// One of the fixed texts in [`perr`].
    Text(&'static str),
    /// `expected '$', got '<byte>'`.
    ExpectedDollar(u8),
}

impl ProtoError {
    /// The error reply line, without the leading `-` and the CRLF.
    pub fn message(self) -> String {
        match self {
            ProtoError::Text(t) => format!("ERR Protocol error: {t}"),
            ProtoError::ExpectedDollar(b) => {
                let c = if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '?'
                };
                format!("ERR Protocol error: expected '$', got '{c}'")
            }
        }
    }
}

/// An array in progress: element count, the elements found so far (offsets into the
/// unconsumed input) and where parsing resumes.
#[derive(Debug, Clone)]
struct Partial {
    argc: usize,
    args: Vec<(usize, usize)>,
    pos: usize,
}

/// The incremental request parser of one connection.
#[derive(Debug, Default, Clone)]
pub struct Parser {
    partial: Option<Partial>,
}

/// Position of the first `\r\n` in `b`.
fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A non-negative decimal header number (`*N`, `$N`); negative values map to `Some(-1)`.
fn parse_len(b: &[u8]) -> Option<i64> {
    let (neg, d) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if d.is_empty() || d.len() > 18 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &c in d {
        v = v * 10 + i64::from(c - b'0');
    }
    Some(if neg { -v } else { v })
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Whether a command is partly parsed (the caller must keep its bytes).
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Parses the next command from `input` (the unconsumed bytes). Returns the bytes consumed
    /// (0 with [`Step::NeedMore`]) and the step.
    pub fn next<'a>(&mut self, input: &'a [u8]) -> (usize, Step<'a>) {
        if self.partial.is_none() {
            match input.first() {
                None => return (0, Step::NeedMore),
                Some(b'*') => {}
                Some(_) => return inline(input),
            }
            let Some(end) = find_crlf(&input[..input.len().min(INLINE_MAX + 2)]) else {
                if input.len() > INLINE_MAX {
                    return (0, Step::Error(ProtoError::Text(perr::MBULK_COUNT_TOO_BIG)));
                }
                return (0, Step::NeedMore);
            };
            let argc = match parse_len(&input[1..end]) {
                Some(n) if n <= 0 => return (end + 2, Step::Skip),
                Some(n) if n as u64 <= MAX_ARGS as u64 => n as usize,
                _ => return (0, Step::Error(ProtoError::Text(perr::MULTIBULK_LEN))),
            };
            self.partial = Some(Partial {
                argc,
                args: Vec::with_capacity(argc.min(64)),
                pos: end + 2,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return (0, Step::NeedMore);
        };
        // Each iteration adds one element or returns.
        while p.args.len() < p.argc {
            let rest = &input[p.pos.min(input.len())..];
            let Some(&first) = rest.first() else {
                return (0, Step::NeedMore);
            };
            if first != b'$' {
                self.partial = None;
                return (0, Step::Error(ProtoError::ExpectedDollar(first)));
            }
            let Some(end) = find_crlf(&rest[..rest.len().min(INLINE_MAX + 2)]) else {
                if rest.len() > INLINE_MAX {
                    self.partial = None;
                    return (0, Step::Error(ProtoError::Text(perr::BULK_COUNT_TOO_BIG)));
                }
                return (0, Step::NeedMore);
            };
            let len = match parse_len(&rest[1..end]) {
                Some(n) if n >= 0 && n as u64 <= MAX_BULK as u64 => n as usize,
                _ => {
                    self.partial = None;
                    return (0, Step::Error(ProtoError::Text(perr::BULK_LEN)));
                }
            };
            let data = end + 2;
            if rest.len() < data + len + 2 {
                return (0, Step::NeedMore);
            }
            if &rest[data + len..data + len + 2] != b"\r\n" {
                self.partial = None;
                return (0, Step::Error(ProtoError::Text(perr::BULK_TERMINATOR)));
            }
            let start = p.pos + data;
            p.args.push((start, start + len));
            p.pos = start + len + 2;
        }
        let done = self.partial.take().unwrap_or(Partial {
            argc: 0,
            args: Vec::new(),
            pos: 0,
        });
        let args = done
            .args
            .iter()
            .map(|&(s, e)| Cow::Borrowed(&input[s..e]))
            .collect();
        (done.pos, Step::Cmd(args))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// An inline command: one line split into words.
fn inline(input: &[u8]) -> (usize, Step<'_>) {
    let Some(nl) = input[..input.len().min(INLINE_MAX + 1)]
        .iter()
        .position(|&b| b == b'\n')
    else {
        if input.len() > INLINE_MAX {
            return (0, Step::Error(ProtoError::Text(perr::INLINE_TOO_BIG)));
        }
        return (0, Step::NeedMore);
    };
    let mut line = &input[..nl];
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    match split_inline(line) {
        Some(args) if args.is_empty() => (nl + 1, Step::Skip),
        Some(args) => (nl + 1, Step::Cmd(args)),
        None => (0, Step::Error(ProtoError::Text(perr::UNBALANCED_QUOTES))),
    }
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c' | 0)
}

/// Splits an inline line into words; None on bad quoting (a closing quote must be followed
/// by a blank or the end of the line).
pub fn split_inline(line: &[u8]) -> Option<Vec<Cow<'_, [u8]>>> {
    let mut out = Vec::new();
    let mut i = 0;
    // Each outer iteration consumes at least one byte.
    while i < line.len() {
        if is_blank(line[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let mut word: Vec<u8> = Vec::new();
        let mut quoted = false;
        while i < line.len() && !is_blank(line[i]) {
            match line[i] {
                b'"' => {
                    quoted = true;
                    i += 1;
                    loop {
                        let &c = line.get(i)?;
                        match c {
                            b'"' => break,
                            b'\\' => {
                                let &e = line.get(i + 1)?;
                                let hex = line
                                    .get(i + 2..i + 4)
                                    .and_then(|h| Some(hex_val(h[0])? * 16 + hex_val(h[1])?));
                                match (e, hex) {
                                    (b'x', Some(v)) => {
                                        word.push(v);
                                        i += 4;
                                        continue;
                                    }
                                    (b'n', _) => word.push(b'\n'),
                                    (b'r', _) => word.push(b'\r'),
                                    (b't', _) => word.push(b'\t'),
                                    (b'b', _) => word.push(8),
                                    (b'a', _) => word.push(7),
                                    (other, _) => word.push(other),
                                }
                                i += 2;
                            }
                            _ => {
                                word.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    if i < line.len() && !is_blank(line[i]) {
                        return None;
                    }
                }
                b'\'' => {
                    quoted = true;
                    i += 1;
                    loop {
                        let &c = line.get(i)?;
                        match c {
                            b'\'' => break,
                            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                                word.push(b'\'');
                                i += 2;
                            }
                            _ => {
                                word.push(c);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    if i < line.len() && !is_blank(line[i]) {
                        return None;
                    }
                }
                c => {
                    word.push(c);
                    i += 1;
                }
            }
        }
        if quoted {
            out.push(Cow::Owned(word));
        } else {
            out.push(Cow::Borrowed(&line[start..i]));
        }
    }
    Some(out)
}

/// Reply encoding (RESP2).
pub mod reply {
    use crate::net::push_u64;

    /// `+text`.
    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `-text`; CR and LF in the text become spaces (an error is one line).
    pub fn error(out: &mut Vec<u8>, s: &str) {
        out.push(b'-');
        out.extend(
            s.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    /// `:n`.
    pub fn int(out: &mut Vec<u8>, n: i64) {
        out.push(b':');
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `$len` and the bytes.
    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        out.push(b'$');
        push_u64(out, b.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }

    /// A bulk string or the null bulk string.
    pub fn opt_bulk(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => bulk(out, b),
            None => nil(out),
        }
    }

    /// The null bulk string `$-1`.
    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    /// The null array `*-1`.
    pub fn nil_array(out: &mut Vec<u8>) {
        out.extend_from_slice(b"*-1\r\n");
    }

    /// An array header `*n`; the elements follow.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        out.push(b'*');
        push_u64(out, n as u64);
        out.extend_from_slice(b"\r\n");
    }

    /// An array of bulk strings.
    pub fn bulks<T: AsRef<[u8]>>(out: &mut Vec<u8>, items: &[T]) {
        array(out, items.len());
        for i in items {
            bulk(out, i.as_ref());
        }
    }

    /// A double as a bulk string, formatted by [`super::format_double`].
    pub fn double(out: &mut Vec<u8>, x: f64) {
        bulk(out, super::format_double(x).as_bytes());
    }
}

/// Formats a double like C's `%.17g` but with the shortest digits that read back to the same
/// value: `1.5`, `3`, `0.0001`, `1e-05`, `1.2345678901234567e+19`, `inf`, `-inf`.
pub fn format_double(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let mut s = String::with_capacity(digits.len() + 8);
    if neg {
        s.push('-');
    }
    if !(-4..17).contains(&exp) {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        s.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            s.push_str(&digits);
            s.extend(std::iter::repeat_n('0', int_len - digits.len()));
        } else {
            s.push_str(&digits[..int_len]);
            s.push('.');
            s.push_str(&digits[int_len..]);
        }
    } else {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
        s.push_str(&digits);
    }
    s
}

/// Parses a score or other double argument: decimal or exponent notation, `inf`, `+inf`,
/// `-inf`; no surrounding blanks; never NaN.
pub fn parse_double(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 256 || s.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(step: Step<'_>) -> Vec<Vec<u8>> {
        match step {
            Step::Cmd(a) => a.into_iter().map(|c| c.into_owned()).collect(),
            other => panic!("not a command: {other:?}"),
        }
    }

    #[test]
    fn array_command() {
        let mut p = Parser::new();
        let inp = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (n, s) = p.next(inp);
        assert_eq!(n, 20);
        assert_eq!(args(s), vec![b"GET".to_vec(), b"k".to_vec()]);
        let (m, s) = p.next(&inp[n..]);
        assert_eq!(m, inp.len() - n);
        assert_eq!(args(s), vec![b"PING".to_vec()]);
    }

    #[test]
    fn partial_resumes() {
        let inp = b"*2\r\n$3\r\nSET\r\n$5\r\nhello\r\n";
        let mut p = Parser::new();
        for cut in 0..inp.len() {
            let (n, s) = p.next(&inp[..cut]);
            assert_eq!((n, s), (0, Step::NeedMore), "cut {cut}");
        }
        let (n, s) = p.next(inp);
        assert_eq!(n, inp.len());
        assert_eq!(args(s), vec![b"SET".to_vec(), b"hello".to_vec()]);
        assert!(!p.in_progress());
    }

    #[test]
    fn empty_and_errors() {
        assert_eq!(Parser::new().next(b"*0\r\n"), (4, Step::Skip));
        assert_eq!(Parser::new().next(b"*-1\r\n"), (5, Step::Skip));
        assert_eq!(Parser::new().next(b"\r\n"), (2, Step::Skip));
        let e = |b: &[u8]| match Parser::new().next(b).1 {
            Step::Error(e) => e.message(),
            other => panic!("{other:?}"),
        };
        assert_eq!(e(b"*x\r\n"), "ERR Protocol error: invalid multibulk length");
        assert_eq!(
            e(b"*1\r\n:1\r\n"),
            "ERR Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            e(b"*1\r\n$-1\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(
            e(b"*1\r\n$536870913\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(
            e(b"*1\r\n$2\r\nabcd"),
            "ERR Protocol error: invalid bulk terminator"
        );
        assert_eq!(
            e(b"GET \"a\r\n"),
            "ERR Protocol error: unbalanced quotes in request"
        );
        // 512 MiB exactly is accepted (and waits for the data without allocating it).
        let mut p = Parser::new();
        assert_eq!(p.next(b"*1\r\n$536870912\r\nab"), (0, Step::NeedMore));
        assert!(p.in_progress());
        let big = vec![b'a'; INLINE_MAX + 1];
        assert_eq!(e(&big), "ERR Protocol error: too big inline request");
    }

    #[test]
    fn inline_commands() {
        let (n, s) = Parser::new().next(b"set  k \"a b\\x41\\n\" 'it\\'s'\r\nx");
        assert_eq!(n, 28);
        assert_eq!(
            args(s),
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert_eq!(Parser::new().next(b"PING"), (0, Step::NeedMore));
        let (_, s) = Parser::new().next(b"PING\n");
        assert_eq!(args(s), vec![b"PING".to_vec()]);
        assert!(split_inline(b"\"a\"b").is_none());
        assert!(split_inline(b"'a").is_none());
        assert_eq!(split_inline(b"  ").map(|v| v.len()), Some(0));
    }

    #[test]
    fn doubles() {
        for (x, s) in [
            (1.5, "1.5"),
            (3.0, "3"),
            (-2.0, "-2"),
            (0.1, "0.1"),
            (1.1, "1.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (123456789012345680000.0, "1.2345678901234568e+20"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (0.0, "0"),
            (1e300, "1e+300"),
            (-1.5e-300, "-1.5e-300"),
        ] {
            assert_eq!(format_double(x), s);
            assert_eq!(parse_double(s.as_bytes()), Some(x));
        }
        assert_eq!(parse_double(b"+inf"), Some(f64::INFINITY));
        assert_eq!(parse_double(b"nan"), None);
        assert_eq!(parse_double(b" 1"), None);
        assert_eq!(parse_double(b"1x"), None);
        assert_eq!(parse_double(b""), None);
    }
}
