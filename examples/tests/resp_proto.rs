//! Property tests of the RESP request parser: arbitrary and corrupted input never panics and
//! always makes progress or asks for more; any split of a valid stream into reads yields the
//! same commands as the whole stream.

use pmem_examples::resp::proto::{Parser, Step};
use proptest::prelude::*;

/// Parses a stream delivered in the given chunks the way the server does (keeping unconsumed
/// bytes); the commands, and whether a protocol error ended it.
fn parse_chunks(chunks: &[Vec<u8>]) -> (Vec<Vec<Vec<u8>>>, bool) {
    let mut p = Parser::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut cmds = Vec::new();
    for ch in chunks {
        buf.extend_from_slice(ch);
        // Each step consumes bytes or stops.
        for _ in 0..=buf.len() {
            let (n, step) = p.next(&buf);
            assert!(n <= buf.len());
            match step {
                Step::NeedMore => {
                    assert_eq!(n, 0);
                    break;
                }
                Step::Skip => assert!(n > 0),
                Step::Cmd(args) => {
                    assert!(n > 0);
                    cmds.push(args.into_iter().map(|a| a.into_owned()).collect());
                }
                Step::Error(e) => {
                    assert!(e.message().starts_with("ERR Protocol error: "));
                    return (cmds, true);
                }
            }
            buf.drain(..n);
        }
    }
    (cmds, false)
}

fn encode(cmd: &[Vec<u8>]) -> Vec<u8> {
    let mut m = format!("*{}\r\n", cmd.len()).into_bytes();
    for w in cmd {
        m.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        m.extend_from_slice(w);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// An inline form of a command whose words are plain (no blanks, no quotes).
fn inline(cmd: &[Vec<u8>]) -> Vec<u8> {
    let mut m = cmd.join(&b' ');
    m.extend_from_slice(b"\r\n");
    m
}

fn split_at_points(s: &[u8], mut points: Vec<usize>) -> Vec<Vec<u8>> {
    points.iter_mut().for_each(|p| *p %= s.len() + 1);
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(s[last..p].to_vec());
        last = p;
    }
    out.push(s[last..].to_vec());
    out
}

fn word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        "[a-zA-Z0-9:_]{1,12}".prop_map(String::into_bytes),
    ]
}

fn plain_word() -> impl Strategy<Value = Vec<u8>> {
    "[a-zA-Z0-9:_]{1,12}".prop_map(String::into_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300),
                                points in prop::collection::vec(any::<usize>(), 0..6)) {
        parse_chunks(&split_at_points(&data, points));
    }

    #[test]
    fn resp_like_garbage_never_panics(parts in prop::collection::vec(
        prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"\r".to_vec()),
            Just(b"\n".to_vec()), Just(b"-1".to_vec()), Just(b"0".to_vec()), Just(b"3".to_vec()),
            Just(b"99999999999999999999".to_vec()), Just(b"536870913".to_vec()),
            Just(b"\"".to_vec()), Just(b"'".to_vec()), Just(b"\\x4".to_vec()), Just(b" ".to_vec()),
            Just(b"GET".to_vec()), Just(b"*2\r\n".to_vec()), Just(b"$3\r\n".to_vec()),
        ], 0..40),
        points in prop::collection::vec(any::<usize>(), 0..6)) {
        let data: Vec<u8> = parts.concat();
        parse_chunks(&split_at_points(&data, points));
    }

    #[test]
    fn any_split_gives_the_same_commands(
        cmds in prop::collection::vec(prop::collection::vec(word(), 1..6), 1..8),
        inline_cmds in prop::collection::vec(prop::collection::vec(plain_word(), 1..4), 0..3),
        points in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut stream: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
        let mut want = cmds.clone();
        for c in &inline_cmds {
            stream.extend_from_slice(&inline(c));
            want.push(c.clone());
        }
        stream.extend_from_slice(b"*0\r\n\r\n");
        let (whole, e1) = parse_chunks(std::slice::from_ref(&stream));
        prop_assert!(!e1);
        prop_assert_eq!(&whole, &want);
        let (split, e2) = parse_chunks(&split_at_points(&stream, points));
        prop_assert!(!e2);
        prop_assert_eq!(split, want);
        // byte by byte
        let bytes: Vec<Vec<u8>> = stream.iter().map(|&b| vec![b]).collect();
        let (single, e3) = parse_chunks(&bytes);
        prop_assert!(!e3);
        prop_assert_eq!(single, whole);
    }

    #[test]
    fn corrupting_a_valid_stream_never_panics(
        cmds in prop::collection::vec(prop::collection::vec(word(), 1..4), 1..4),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        points in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let mut stream: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
        for (at, b) in flips {
            let i = at % stream.len();
            stream[i] = b;
        }
        parse_chunks(&split_at_points(&stream, points));
    }
}

#[test]
fn huge_declared_lengths_are_refused_or_wait_without_allocating() {
    // Over the limit: an error at once.
    let (cmds, err) = parse_chunks(&[b"*1\r\n$536870913\r\n".to_vec()]);
    assert!(cmds.is_empty() && err);
    // At the limit: waits for the bytes (the parser holds only offsets).
    let mut p = Parser::new();
    let mut buf = b"*2\r\n$3\r\nSET\r\n$536870912\r\n".to_vec();
    buf.extend(std::iter::repeat_n(b'x', 1000));
    assert_eq!(p.next(&buf), (0, Step::NeedMore));
    assert!(p.in_progress());
    // A huge element count allocates nothing up front either.
    let mut p = Parser::new();
    assert_eq!(p.next(b"*2147483647\r\n$1\r\na\r\n"), (0, Step::NeedMore));
    let (_, err) = parse_chunks(&[b"*2147483648\r\n".to_vec()]);
    assert!(err);
}
