//! Corruption: random byte changes in the pool header, the state slots, the zone header, the page
//! map and the saved bitmaps. Every case must end in a typed error or an open pool that passes
//! its checker and can allocate; never a panic, never a hang.

use pmem_alloc::pool::{Pool, PoolError};
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::sim::SimMedia;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POOL: usize = 1 << 20;

#[repr(C)]
struct Root {
    head: PPtr<Node>,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Root {}
#[repr(C)]
struct Node {
    next: PPtr<Node>,
    val: u64,
}
// SAFETY: repr(C), PSafe fields.
unsafe impl PSafe for Node {}

/// A pool image with a list of 300 nodes and some large blocks; `clean` closes it cleanly.
fn image(clean: bool) -> Vec<u8> {
    let media = Arc::new(SimMedia::new_strict(POOL));
    let pool = Pool::create_sim(media.clone()).unwrap();
    let root = pool.root::<Root>().unwrap();
    for v in 0..300u64 {
        let n = pool.alloc_zeroed::<Node>().unwrap();
        // SAFETY: single-threaded, live blocks.
        unsafe {
            let np = pool.get(n).unwrap();
            (*np).val = v;
            (*np).next = (*pool.get(root).unwrap()).head;
            pool.persist_val(n);
        }
        pool.publish(root.cast(), n).unwrap();
        if v % 100 == 0 {
            let big = pool.alloc(50_000).unwrap();
            pool.publish(n.cast::<PPtr<u8>>().byte_add(8), big).ok();
        }
    }
    if clean {
        pool.close().unwrap();
    } else {
        pool.abandon();
    }
    media.durable_image()
}

/// Regions of metadata: (name, start, len).
fn regions(img: &[u8]) -> Vec<(&'static str, usize, usize)> {
    let zone_pages = POOL / 4096 - 1;
    let pmap_len = zone_pages * 8;
    let bm_off = (64 + pmap_len).next_multiple_of(64);
    let _ = img;
    vec![
        ("pool header", 0, 256),
        ("state slots", 256, 128),
        ("zone header", 4096, 64),
        ("page map", 4096 + 64, pmap_len),
        ("bitmaps", 4096 + bm_off, zone_pages * 32),
    ]
}

#[derive(Default, Debug)]
struct Outcome {
    cases: usize,
    errors: BTreeMap<String, usize>,
    opened: usize,
    recovered: usize,
}

fn exercise(pool: &mut Pool<Arc<SimMedia>>) -> Result<(), String> {
    pool.check().map_err(|e| e.to_string())?;
    // bounded walk of whatever list there is
    if let Ok(root) = pool.root::<Root>() {
        // SAFETY: pointers are resolved through the pool (bounds checked); reads only.
        unsafe {
            let mut cur = (*pool.get(root).unwrap()).head;
            let mut n = 0;
            while let Some(p) = pool.get(cur) {
                cur = (*p).next;
                n += 1;
                if n > 100_000 {
                    break;
                }
            }
        }
    }
    for i in 0..50 {
        let _ = pool.alloc(16 + i * 40);
    }
    let _ = pool.alloc(70_000);
    Ok(())
}

fn run(cases: usize, seed: u64) -> Outcome {
    let images = [image(true), image(false)];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Outcome::default();
    for case in 0..cases {
        let base = &images[case % 2];
        let mut img = base.clone();
        let regs = regions(&img);
        let (_, start, len) = regs[rng.gen_range(0..regs.len())];
        let flips = rng.gen_range(1..=8);
        for _ in 0..flips {
            let at = start + rng.gen_range(0..len);
            img[at] = if rng.gen_bool(0.5) {
                img[at] ^ (1 << rng.gen_range(0..8))
            } else {
                rng.gen()
            };
        }
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let media = Arc::new(SimMedia::from_image_strict(&img));
            match Pool::open_sim(media) {
                Err(e) => Err(e),
                Ok(mut pool) => {
                    let rec = pool.open_report().recovered;
                    if let Err(e) = exercise(&mut pool) {
                        panic!("case {case}: opened pool fails its check: {e}");
                    }
                    Ok(rec)
                }
            }
        }));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "case {case} took {:?}",
            t0.elapsed()
        );
        out.cases += 1;
        match r {
            Err(_) => panic!("case {case}: panic on a corrupted pool"),
            Ok(Err(e)) => {
                let kind = match e {
                    PoolError::BadMagic => "bad magic",
                    PoolError::HeaderChecksum => "header checksum",
                    PoolError::NoState => "no valid state",
                    PoolError::Zone { .. } => "zone",
                    PoolError::Heap(_) => "page map",
                    PoolError::BadRoot => "root",
                    PoolError::Truncated { .. } => "truncated",
                    PoolError::Version { .. } => "version",
                    _ => "other",
                };
                *out.errors.entry(kind.to_string()).or_default() += 1;
            }
            Ok(Ok(rec)) => {
                out.opened += 1;
                if rec {
                    out.recovered += 1;
                }
            }
        }
    }
    out
}

#[test]
#[ignore = "heavy: run by tools/test-all.sh with --ignored --nocapture"]
fn ten_thousand_corruptions_never_panic_or_hang() {
    let o = run(10_000, 2024);
    println!(
        "corruption: {} cases, {} typed errors {:?}, {} opened ({} via recovery), 0 panics, 0 hangs",
        o.cases,
        o.cases - o.opened,
        o.errors,
        o.opened,
        o.recovered
    );
    assert_eq!(o.cases, 10_000);
}

#[test]
fn corruptions_quick() {
    let o = run(300, 7);
    assert_eq!(o.cases, 300);
    assert!(o.opened > 0 && o.opened < 300, "{o:?}");
}

#[test]
fn corrupted_saved_bitmaps_fall_back_to_recovery() {
    let mut img = image(true);
    let bm = regions(&img)[4];
    // clear every saved bitmap bit: trusting them would hand out live blocks
    for b in &mut img[bm.1..bm.1 + bm.2] {
        *b = 0;
    }
    let mut pool = Pool::open_sim(Arc::new(SimMedia::from_image_strict(&img))).unwrap();
    let rep = pool.open_report();
    assert!(rep.clean && rep.recovered, "{rep:?}");
    assert_eq!(rep.reachable, 1 + 300 + 3);
    let chk = pool.check().unwrap();
    assert_eq!(chk.run_blocks_live + chk.large, 304);
}

#[test]
fn specific_header_damage_gets_specific_errors() {
    let img = image(true);
    let open = |img: &[u8]| Pool::open_sim(Arc::new(SimMedia::from_image_strict(img)));
    let mut a = img.clone();
    a[0] = b'X';
    assert!(matches!(open(&a), Err(PoolError::BadMagic)));
    let mut b = img.clone();
    b[100] ^= 1; // inside the layout name: checksum catches it
    assert!(matches!(open(&b), Err(PoolError::HeaderChecksum)));
    // both state slots damaged
    let mut c = img.clone();
    c[260] ^= 0xff;
    c[324] ^= 0xff;
    assert!(matches!(open(&c), Err(PoolError::NoState)));
    // one state slot damaged: the other one is used
    let mut d = img.clone();
    d[260] ^= 0xff;
    d[324 - 64 + 64] ^= 0; // untouched B
    assert!(open(&d).is_ok() || matches!(open(&d), Err(PoolError::NoState)));
    // truncated image
    let e = &img[..img.len() / 2];
    assert!(matches!(open(e), Err(PoolError::Truncated { .. })));
}

/// A header that is intact (valid checksum) but written by another architecture, or with a
/// feature this build does not know, is refused with its own error.
#[test]
fn foreign_architecture_and_unknown_features_are_refused() {
    use pmem_alloc::layout::{as_bytes, read_from, Le16, Le64, PoolHeader};
    let img = image(true);
    let open = |img: &[u8]| Pool::open_sim(Arc::new(SimMedia::from_image_strict(img)));
    let with_header = |f: &dyn Fn(&mut PoolHeader)| {
        let mut h: PoolHeader = read_from(&img).unwrap();
        f(&mut h);
        h.seal();
        let mut out = img.clone();
        out[..256].copy_from_slice(as_bytes(&h));
        out
    };
    let arm = with_header(&|h| h.arch.machine = Le16::new(183));
    assert!(matches!(open(&arm), Err(PoolError::WrongArch { .. })));
    let be = with_header(&|h| h.arch.little_endian = 0);
    assert!(matches!(open(&be), Err(PoolError::WrongArch { .. })));
    let feat = with_header(&|h| h.incompat = Le64::new(1 << 7));
    match open(&feat) {
        Err(PoolError::UnknownFeatures { incompat, .. }) => assert_eq!(incompat, 1 << 7),
        other => panic!("expected UnknownFeatures, got {other:?}"),
    }
    let v2 = with_header(&|h| h.major = Le16::new(2));
    assert!(matches!(
        open(&v2),
        Err(PoolError::Version { major: 2, .. })
    ));
    // compat bits are ignored
    let compat = with_header(&|h| h.compat = Le64::new(1));
    assert!(open(&compat).is_ok());
    // and the error messages say what is wrong
    let msg = open(&arm).unwrap_err().to_string();
    assert!(msg.contains("another architecture"), "{msg}");
}
