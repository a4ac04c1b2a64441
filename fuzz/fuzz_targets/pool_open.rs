//! Opening a pool from a corrupted image (`pmem_alloc::pool::Pool::open`), the fuzzed version of
//! pmem-alloc/tests/corrupt_pool.rs.
//!
//! Two base images are made once per process with the public API: a 1 MiB pool holding a list
//! of 300 nodes, a few large blocks, a committed transaction and three staged writes, closed
//! cleanly or abandoned (as after a crash: the staged records are still to be replayed). Input:
//! one byte of options (bit 0: the abandoned image; bit 1: recompute the checksums of the pool
//! header, both state slots, the zone header, the transaction lane area and the staged records
//! after editing, so that the open gets past them and validates the contents), then edits of
//! three bytes each: a little-endian offset into the first 64 KiB (page 0 with the header and
//! state slots, the zone's metadata pages: page map and bitmaps, the first data pages) and the
//! byte to store there. The image is written to a file on tmpfs and opened.
//! Property: the open returns a typed error, or a pool that passes its checker, can be walked
//! and can allocate; never a panic, a sanitizer report or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_alloc::layout::{
    as_bytes, read_from, undo_checksum, LaneArea, PoolHeader, StagedHeader, StateSlot, ZoneHeader,
    LANE_HEADER, LANE_SIZE, STAGED_HEADER, STAGED_KIND, STATE_SLOT_OFFSET,
};
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};
use std::path::PathBuf;
use std::sync::OnceLock;

const POOL: u64 = 1 << 20;
const PAGE: usize = 4096;
/// Edits reach this far into the image.
const EDIT_SPAN: usize = 64 * 1024;

#[repr(C)]
struct Root {
    head: PPtr<Node>,
    count: u64,
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

fn opts() -> PoolOptions {
    PoolOptions {
        max_size: 4 * POOL,
        ..PoolOptions::default()
    }
}

/// This process's scratch pool file: on /dev/shm (tmpfs: the pool's msync costs nothing) when
/// there is one, else in the temporary directory.
fn path() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    dir.join(format!("pmem-fuzz-pool-open-{}.pool", std::process::id()))
}

/// Builds a pool with the public API and returns its file's bytes.
fn image(clean: bool) -> Vec<u8> {
    let p = path();
    let _ = std::fs::remove_file(&p);
    let pool = Pool::create(&p, POOL, &opts()).expect("create the base pool");
    let root = pool.root::<Root>().unwrap();
    for v in 0..300u64 {
        let n = pool.alloc_zeroed::<Node>().unwrap();
        // SAFETY: single-threaded; `n` and the root are live blocks of this pool.
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
    // a committed transaction: the state records a lane area
    pool.transaction(|tx| {
        tx.get_mut(root)?.count = 300;
        Ok::<(), pmem_alloc::tx::TxError>(())
    })
    .unwrap();
    // staged writes: records in the lanes, replayed by the next open of the abandoned image
    for v in 0..3u64 {
        pool.staged(|s| s.write_u64(root.cast::<u64>().byte_add(8), 1000 + v))
            .unwrap();
    }
    if clean {
        pool.close().unwrap();
    } else {
        pool.abandon();
    }
    let img = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    img
}

fn images() -> &'static [Vec<u8>; 2] {
    static IMAGES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    IMAGES.get_or_init(|| [image(true), image(false)])
}

fn put<T: pmem_alloc::layout::OnMedia>(img: &mut [u8], at: usize, v: &T) {
    let b = as_bytes(v);
    img[at..at + b.len()].copy_from_slice(b);
}

/// Recomputes the checksums the edits broke, where the structs are still where they belong.
fn reseal(img: &mut [u8]) {
    if let Some(mut h) = read_from::<PoolHeader>(img) {
        h.seal();
        put(img, 0, &h);
    }
    let mut lanes = Vec::new();
    for i in 0..2 {
        let at = STATE_SLOT_OFFSET + i * 64;
        if let Some(mut s) = read_from::<StateSlot>(&img[at..]) {
            s.seal();
            put(img, at, &s);
            lanes.push(s.lanes.get());
        }
    }
    if let Some(mut z) = read_from::<ZoneHeader>(&img[PAGE..]) {
        z.seal();
        put(img, PAGE, &z);
    }
    for off in lanes {
        let Ok(at) = usize::try_from(off) else {
            continue;
        };
        if at
            .checked_add(size_of::<LaneArea>())
            .is_some_and(|end| end <= img.len())
        {
            if let Some(mut l) = read_from::<LaneArea>(&img[at..]) {
                l.seal();
                put(img, at, &l);
                reseal_records(img, at, l.nlanes.get() as usize);
            }
        }
    }
}

/// Recomputes the checksums of the staged records in the inline logs of the lane area at
/// `area` (records whose kind word still says so and whose length still fits).
fn reseal_records(img: &mut [u8], area: usize, nlanes: usize) {
    for lane in 0..nlanes.min(64) {
        let rec = area + 64 + lane * LANE_SIZE + LANE_HEADER;
        let Some(h) = img.get(rec..).and_then(read_from::<StagedHeader>) else {
            return;
        };
        let end = rec + STAGED_HEADER + h.len.get() as usize;
        if h.kind.get() & 0xFFFF != STAGED_KIND || end > img.len() {
            continue;
        }
        let sum = undo_checksum(&img[rec + 8..end]);
        img[rec..rec + 8].copy_from_slice(&sum.to_le_bytes());
    }
}

/// What a successfully opened pool must survive.
fn exercise(pool: &mut Pool) {
    if let Err(e) = pool.check() {
        panic!("an opened pool fails its check: {e}");
    }
    if let Ok(root) = pool.root::<Root>() {
        // SAFETY: every pointer is resolved through the pool (bounds checked); reads only.
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
    for i in 0..20 {
        let _ = pool.alloc(16 + i * 40);
    }
    let _ = pool.alloc(70_000);
    if let Err(e) = pool.check() {
        panic!("the pool fails its check after allocating: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, edits)) = data.split_first() else {
        return;
    };
    let mut img = images()[usize::from(flags & 1)].clone();
    let span = EDIT_SPAN.min(img.len());
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % span;
        img[at] = e[2];
    }
    if flags & 2 != 0 {
        reseal(&mut img);
    }
    let p = path();
    std::fs::write(&p, &img).unwrap();
    let r = Pool::open(&p, &opts());
    if let Ok(mut pool) = r {
        exercise(&mut pool);
        let _ = pool.close();
    }
    std::fs::remove_file(&p).unwrap();
});
