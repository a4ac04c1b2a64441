//! Space: metadata bytes per object, usable fraction of a full pool, and footprint after a
//! fill-and-free cycle. Every measurement runs in a fresh child process (the `child-space`
//! command of `alloc_compare`) holding only the peer measured, so that memory kept by earlier
//! work or by other peers cannot blur it.
//!
//! - **Metadata per object**, DRAM and volatile-PMEM peers: resident memory (`/proc/self/statm`,
//!   file-backed pages of a heap file included) after allocating and touching `n` objects,
//!   minus before, divided by `n`, minus the object size. Persistent peers: a pool of fixed
//!   size filled with objects of one size until allocation fails; pool bytes / objects - size
//!   (fixed pool metadata is thus spread over the objects).
//! - **Usable fraction** (persistent peers): a pool filled with random sizes (16 B..4 KiB,
//!   log-uniform, fixed seed) until 1000 allocations in a row fail; requested bytes held /
//!   pool bytes.
//! - **Footprint after fragmentation** (volatile peers): random sizes (16 B..4 KiB) allocated
//!   to `live` bytes, then three times: free a random half, allocate back to `live` bytes;
//!   finally free a random half. Footprint = resident growth, and for pmem-alloc's volatile heap
//!   also the allocated blocks of its file (`st_blocks`); compared with the live bytes, at the
//!   peak (after the last refill: how well freed memory is reused) and at the end (after the
//!   last half is freed: how much is given back).
//!
//! pmem-alloc's volatile heap is built with the builder's default initial size here (64 MiB),
//! on a named file so that `st_blocks` can be read.

use super::peers::{self, PeerConfig};
use super::rng::Rng;
use super::{AllocPeer, PeerKind};
use std::path::{Path, PathBuf};

/// One space result (one child run).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SpaceResult {
    /// Peer name.
    pub peer: String,
    /// `meta`, `fill` or `frag`.
    pub test: String,
    /// Object size (0 for random sizes).
    pub size: usize,
    /// Objects held at the end.
    pub objects: u64,
    /// Requested bytes held at the end.
    pub live_bytes: u64,
    /// Bytes consumed: resident growth, or pool bytes for pool fills.
    pub used_bytes: u64,
    /// pmem-alloc volatile heap: allocated bytes of its file at the end (`st_blocks * 512`).
    pub file_bytes: Option<u64>,
    /// How `used_bytes` was measured.
    pub method: String,
    /// `frag`: requested bytes held at the peak (after the last refill).
    pub peak_live_bytes: u64,
    /// `frag`: resident growth at the peak.
    pub peak_used_bytes: u64,
    /// `frag`, pmem-alloc volatile heap: allocated bytes of its file at the peak.
    pub peak_file_bytes: Option<u64>,
}

/// Resident bytes of this process.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// A vector of `n` zeros with every page written (so its pages are resident before a baseline).
fn touched_vec(n: usize) -> Vec<usize> {
    // a non-zero fill value is written (zeros may come from untouched calloc pages)
    let mut v = vec![usize::MAX; n];
    v.fill(0);
    v
}

fn touch(p: *mut u8, v: usize) {
    // SAFETY: a live block of at least 8 bytes, 8-byte aligned.
    unsafe { p.cast::<usize>().write_volatile(v) };
}

/// Runs one space test in this (child) process.
pub fn run_child(
    peer_name: &str,
    test: &str,
    size: usize,
    n: usize,
    live: u64,
    cfg: &PeerConfig,
) -> Result<SpaceResult, String> {
    // pmem-alloc's volatile heap in `frag` uses a named file (so st_blocks can be read).
    let named = (peer_name == "pmem-alloc volatile" && test == "frag")
        .then(|| peers::scratch(&cfg.dir, "vheap"));
    let peer: std::sync::Arc<dyn AllocPeer> = match &named {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            std::sync::Arc::new(FileHeap::create(path)?)
        }
        None => peers::open(peer_name, cfg)?,
    };
    let mut r = SpaceResult {
        peer: peer_name.into(),
        test: test.into(),
        size,
        ..Default::default()
    };
    // warm up the allocator's own state
    let w = peer.alloc(64);
    // SAFETY: just allocated with 64 bytes.
    unsafe { peer.free(w, 64) };
    match test {
        "meta" if peer.kind() == PeerKind::Persistent => {
            let mut ptrs = touched_vec(cfg.pool_size as usize / size.max(16) + 1);
            ptrs.clear();
            loop {
                let p = peer.alloc(size);
                if p.is_null() {
                    break;
                }
                touch(p, size);
                ptrs.push(p as usize);
            }
            r.objects = ptrs.len() as u64;
            r.live_bytes = r.objects * size as u64;
            r.used_bytes = cfg.pool_size;
            r.method = "pool filled until allocation fails".into();
            free_all(&*peer, &ptrs, |_| size);
        }
        "meta" => {
            let mut ptrs = touched_vec(n);
            ptrs.clear();
            let before = rss_bytes();
            for _ in 0..n {
                let p = peer.alloc(size);
                assert!(!p.is_null(), "out of memory");
                touch(p, size);
                ptrs.push(p as usize);
            }
            r.used_bytes = rss_bytes().saturating_sub(before);
            r.objects = n as u64;
            r.live_bytes = (n * size) as u64;
            r.method = "resident growth".into();
            free_all(&*peer, &ptrs, |_| size);
        }
        "fill" => {
            let mut rng = Rng::new(super::workloads::SEED);
            let mut ptrs = touched_vec(cfg.pool_size as usize / 16 + 1);
            ptrs.clear();
            let mut sizes = touched_vec(ptrs.capacity());
            sizes.clear();
            let mut fails = 0;
            while fails < 1000 {
                let s = rng.size_log(16, 4096);
                let p = peer.alloc(s);
                if p.is_null() {
                    fails += 1;
                    continue;
                }
                fails = 0;
                touch(p, s);
                ptrs.push(p as usize);
                sizes.push(s);
            }
            r.objects = ptrs.len() as u64;
            r.live_bytes = sizes.iter().sum::<usize>() as u64;
            r.used_bytes = cfg.pool_size;
            r.method = "pool filled with random sizes until 1000 failures in a row".into();
            let mut i = 0;
            free_all(&*peer, &ptrs, |_| {
                i += 1;
                sizes[i - 1]
            });
        }
        "frag" => {
            let mut rng = Rng::new(super::workloads::SEED ^ 0xF4A6);
            let cap = (live as usize / 16) * 2 + 16;
            let mut ptrs = touched_vec(cap);
            ptrs.clear();
            let mut sizes = touched_vec(cap);
            sizes.clear();
            let before = rss_bytes();
            let mut held = 0u64;
            let fill =
                |ptrs: &mut Vec<usize>, sizes: &mut Vec<usize>, held: &mut u64, rng: &mut Rng| {
                    while *held < live {
                        let s = rng.size_log(16, 4096);
                        let p = peer.alloc(s);
                        assert!(!p.is_null(), "out of memory");
                        touch(p, s);
                        ptrs.push(p as usize);
                        sizes.push(s);
                        *held += s as u64;
                    }
                };
            let halve =
                |ptrs: &mut Vec<usize>, sizes: &mut Vec<usize>, held: &mut u64, rng: &mut Rng| {
                    let mut i = 0;
                    while i < ptrs.len() {
                        if rng.below(2) == 0 {
                            // SAFETY: a live block with its size; removed from the lists.
                            unsafe { peer.free(ptrs[i] as *mut u8, sizes[i]) };
                            *held -= sizes[i] as u64;
                            ptrs.swap_remove(i);
                            sizes.swap_remove(i);
                        } else {
                            i += 1;
                        }
                    }
                };
            fill(&mut ptrs, &mut sizes, &mut held, &mut rng);
            for _ in 0..3 {
                halve(&mut ptrs, &mut sizes, &mut held, &mut rng);
                fill(&mut ptrs, &mut sizes, &mut held, &mut rng);
            }
            r.peak_live_bytes = held;
            r.peak_used_bytes = rss_bytes().saturating_sub(before);
            r.peak_file_bytes = named.as_deref().map(file_blocks);
            halve(&mut ptrs, &mut sizes, &mut held, &mut rng);
            r.used_bytes = rss_bytes().saturating_sub(before);
            r.objects = ptrs.len() as u64;
            r.live_bytes = held;
            r.method = "resident growth".into();
            if let Some(path) = &named {
                r.file_bytes = Some(file_blocks(path));
            }
            let mut i = 0;
            free_all(&*peer, &ptrs, |_| {
                i += 1;
                sizes[i - 1]
            });
        }
        _ => return Err(format!("unknown space test {test}")),
    }
    if let Some(path) = &named {
        let _ = std::fs::remove_file(path);
    }
    Ok(r)
}

fn free_all(peer: &dyn AllocPeer, ptrs: &[usize], mut size: impl FnMut(usize) -> usize) {
    for &p in ptrs {
        // SAFETY: every entry is a live block of the peer, freed once, with its size.
        unsafe { peer.free(p as *mut u8, size(p)) };
    }
}

/// Allocated bytes of a file (`st_blocks * 512`).
pub fn file_blocks(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// pmem-alloc's volatile heap on a named file (for `st_blocks`).
#[derive(Debug)]
struct FileHeap {
    heap: pmem_alloc::volatile::VolatileHeap,
    _path: PathBuf,
}

impl FileHeap {
    fn create(path: &Path) -> Result<Self, String> {
        let heap = pmem_alloc::volatile::VolatileHeap::builder()
            .file(path)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(FileHeap {
            heap,
            _path: path.into(),
        })
    }
}

impl AllocPeer for FileHeap {
    fn name(&self) -> &str {
        "pmem-alloc volatile"
    }
    fn kind(&self) -> PeerKind {
        PeerKind::VolatilePmem
    }
    fn alloc(&self, size: usize) -> *mut u8 {
        // SAFETY: size > 0, alignment 8.
        self.heap
            .alloc(unsafe { std::alloc::Layout::from_size_align_unchecked(size, 8) })
    }
    unsafe fn free(&self, p: *mut u8, size: usize) {
        // SAFETY: `p` came from `alloc` with this layout (caller's contract).
        unsafe {
            self.heap
                .dealloc(p, std::alloc::Layout::from_size_align_unchecked(size, 8))
        }
    }
}
