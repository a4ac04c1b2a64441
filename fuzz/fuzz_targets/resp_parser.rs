//! The RESP2 / inline request parser of `pmem-redis` (`pmem_examples::resp::proto::Parser`).
//!
//! Input: two bytes choosing how the stream is cut into reads, then the stream. The stream is fed
//! the way the server feeds it (unconsumed bytes stay in the buffer, new reads are appended) and,
//! separately, in one piece. Properties: no panic; every step consumes no more than it was given
//! and a command or skip consumes something; no argument is longer than the bytes it came from
//! (nothing is sized by a declared length); and cutting the stream into reads does not change the
//! commands or the error found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_examples::resp::proto::{Parser, ProtoError, Step};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Cmd(Vec<Vec<u8>>),
    Skip,
    Error(ProtoError),
}

/// Runs the parser over everything in `buf` (dropping consumed bytes); true if the connection
/// is closed (protocol error).
fn drain(p: &mut Parser, buf: &mut Vec<u8>, events: &mut Vec<Event>) -> bool {
    loop {
        let (n, step) = p.next(buf);
        assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
        let ev = match step {
            Step::NeedMore => {
                assert_eq!(n, 0, "NeedMore consumed input");
                return false;
            }
            Step::Skip => {
                assert!(n > 0, "Skip without progress");
                Event::Skip
            }
            Step::Cmd(args) => {
                assert!(n > 0, "command without progress");
                assert!(!args.is_empty(), "empty command");
                let total: usize = args.iter().map(|a| a.len()).sum();
                assert!(total <= n, "{total} argument bytes from {n} input bytes");
                Event::Cmd(args.into_iter().map(|a| a.into_owned()).collect())
            }
            Step::Error(e) => {
                let _ = e.message();
                events.push(Event::Error(e));
                return true;
            }
        };
        events.push(ev);
        buf.drain(..n);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((cut, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    // one piece
    let mut whole = Vec::new();
    let mut buf = stream.to_vec();
    drain(&mut Parser::new(), &mut buf, &mut whole);

    // in reads of 1..=max bytes (a small LCG seeded by the first byte)
    let max = usize::from(cut[0] % 64) + 1;
    let mut state = u32::from(cut[1]) | 1;
    let mut chunked = Vec::new();
    let mut p = Parser::new();
    let mut buf = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let k = ((state >> 16) as usize % max + 1).min(rest.len());
        buf.extend_from_slice(&rest[..k]);
        rest = &rest[k..];
        if drain(&mut p, &mut buf, &mut chunked) {
            break;
        }
    }
    assert_eq!(
        whole, chunked,
        "reads of at most {max} bytes change the result"
    );
});
