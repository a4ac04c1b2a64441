//! The memcached text and meta protocol parser of `pmem-memcached`
//! (`pmem_examples::memcache::proto::Parser`), and the same stream through the server's
//! per-read loop (`exec::process`) against the DRAM reference store. The cache speaks no binary
//! protocol, so there is no binary parser to fuzz.
//!
//! Input: three bytes (the largest read, a seed for the read sizes, the item size limit), then
//! the stream, fed as the server feeds it: unconsumed bytes stay in the buffer, new reads are
//! appended. Properties: no panic; a step consumes at most what it was given; every step but
//! `NeedMore` makes progress; what stays buffered while the parser waits is bounded by the
//! protocol's limits (a line of at most `LINE_MAX`, a multi-get line of at most
//! `MULTIGET_LINE_MAX`, or one command line and a data block that fits the item size limit),
//! never by a length the client declared; keys respect `KEY_MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_examples::memcache::exec::{self, Flow, ServerInfo};
use pmem_examples::memcache::memstore::MemStore;
use pmem_examples::memcache::proto::{tokens, Command, Parser, Step, LINE_MAX, MULTIGET_LINE_MAX};
use pmem_examples::memcache::store::KEY_MAX;

/// Read sizes: 1..=max bytes from a small LCG.
struct Reads {
    max: usize,
    state: u32,
}

impl Reads {
    fn next(&mut self, left: usize) -> usize {
        self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((self.state >> 16) as usize % self.max + 1).min(left)
    }
}

/// Parses everything in `buf`; true if the connection closes.
fn drain(p: &mut Parser, buf: &mut Vec<u8>, item_max: usize) -> bool {
    loop {
        let (n, step) = p.next(buf);
        assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
        match step {
            Step::NeedMore => {
                buf.drain(..n);
                if p.swallowing() {
                    assert!(buf.is_empty(), "swallowing with bytes left");
                }
                check_waiting(buf, item_max);
                return false;
            }
            Step::Close(_) => return true,
            Step::Continue | Step::Error(_) => assert!(n > 0, "no progress"),
            Step::Cmd(cmd) => {
                assert!(n > 0, "command without progress");
                check_command(&cmd, item_max);
            }
        }
        buf.drain(..n);
    }
}

/// What the parser leaves buffered while waiting for more.
fn check_waiting(buf: &[u8], item_max: usize) {
    match buf.iter().position(|&b| b == b'\n') {
        // a command line and part of its data block
        Some(nl) => assert!(
            buf.len() - (nl + 1) <= item_max + 2,
            "waiting for a data block of {} bytes (item limit {item_max})",
            buf.len() - (nl + 1)
        ),
        None => {
            assert!(
                buf.len() <= MULTIGET_LINE_MAX,
                "line of {} bytes",
                buf.len()
            );
            if buf.len() > LINE_MAX {
                let t = buf.trim_ascii_start();
                assert!(
                    t.starts_with(b"get ") || t.starts_with(b"gets "),
                    "a {}-byte line that is not a multi-get",
                    buf.len()
                );
            }
        }
    }
}

fn check_command(cmd: &Command<'_>, item_max: usize) {
    match cmd {
        Command::Get { keys, .. } => assert!(tokens(keys).all(|k| k.len() <= KEY_MAX)),
        Command::Store { key, data, .. } => {
            assert!(key.len() <= KEY_MAX);
            assert!(data.len() <= item_max);
        }
        Command::Delete { key, .. } | Command::Arith { key, .. } | Command::Touch { key, .. } => {
            assert!(key.len() <= KEY_MAX)
        }
        Command::Mg(m) | Command::Md(m) | Command::Ma(m) => assert!(m.key.len() <= KEY_MAX),
        Command::Ms(m, data) => {
            assert!(m.key.len() <= KEY_MAX);
            assert!(data.len() <= item_max);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(head[0] % 128) + 1;
    let item_max = 1024 << (head[2] % 4);

    // the parser alone
    let mut reads = Reads {
        max,
        state: u32::from(head[1]) | 1,
    };
    let mut p = Parser::new(item_max);
    let mut buf = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let k = reads.next(rest.len());
        buf.extend_from_slice(&rest[..k]);
        rest = &rest[k..];
        if drain(&mut p, &mut buf, item_max) {
            break;
        }
    }

    // the server's loop over the reference store
    let mut reads = Reads {
        max,
        state: u32::from(head[1]) | 1,
    };
    let store = MemStore::new(item_max, 1 << 20);
    let info = ServerInfo::for_tests();
    let mut p = Parser::new(item_max);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut rest = stream;
    while !rest.is_empty() {
        let k = reads.next(rest.len());
        buf.extend_from_slice(&rest[..k]);
        rest = &rest[k..];
        let (used, flow) = exec::process(&mut p, &store, &info, &buf, &mut out);
        assert!(used <= buf.len());
        buf.drain(..used);
        out.clear();
        if flow != Flow::Continue {
            break;
        }
    }
});
