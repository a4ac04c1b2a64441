//! Throughput workloads, the worker threads that run them and the interleaved trial driver.
//!
//! Every workload is a *unit* of work per thread (e.g. 1000 alloc+free pairs) repeated `reps`
//! times; a result is the wall time of the run divided by the operations *per thread*
//! (ns/op per thread: with perfect scaling, 2 threads show the same number as 1). An operation
//! is one allocation plus its free (cache-scratch: one allocation, 100 writes, one free).
//!
//! Runs are executed by persistent worker threads (so allocators keep their thread caches
//! between runs, as in a long-running program), which start together at a barrier and time
//! themselves (run time = first start to last end). Setup
//! (pre-filling windows, allocating bookkeeping arrays from the process allocator) and teardown
//! (freeing what is left) are not timed. Nothing in a timed phase allocates from the process
//! allocator except through the peer.

use super::rng::Rng;
use super::AllocPeer;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Workload {
    /// 64-byte allocation immediately freed, 1000 per unit.
    Pair64,
    /// 1000 allocations of 64 bytes, then their 1000 frees.
    Batch64,
    /// Random sizes 16 B..4 KiB (log-uniform), a window of 100 live objects: each operation
    /// frees a random slot's object and allocates a new one in its place; 1000 per unit.
    Mix,
    /// threadtest: 10 000 allocations of 8 bytes, then their frees.
    Threadtest,
    /// larson: a shared array of 1000 slots per thread; each operation allocates 16..512 bytes
    /// and swaps it into a random slot of the whole array, freeing the previous occupant,
    /// usually allocated by another thread; 1000 per unit.
    Larson,
    /// sh6bench: 1000 allocations of mixed sizes 16..1024 bytes, freed forward, in reverse or
    /// in a random order (rotating per unit).
    Sh6bench,
    /// cache-scratch: each thread frees a 8-byte object the main thread allocated next to the
    /// others' objects, then 100 times allocates 8 bytes, writes them 100 times and frees them.
    /// An allocator that hands the freed neighbour block back causes false sharing.
    CacheScratch,
}

impl Workload {
    /// All workloads, in table order.
    pub const ALL: [Workload; 7] = [
        Workload::Pair64,
        Workload::Batch64,
        Workload::Mix,
        Workload::Threadtest,
        Workload::Larson,
        Workload::Sh6bench,
        Workload::CacheScratch,
    ];

    /// Name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Pair64 => "pair-64",
            Workload::Batch64 => "batch-1000x64",
            Workload::Mix => "mix-16..4K",
            Workload::Threadtest => "threadtest",
            Workload::Larson => "larson",
            Workload::Sh6bench => "sh6bench",
            Workload::CacheScratch => "cache-scratch",
        }
    }

    /// The workload called `s`.
    pub fn parse(s: &str) -> Option<Workload> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Operations per unit per thread.
    pub fn ops_per_unit(self) -> u64 {
        match self {
            Workload::Threadtest => THREADTEST_N as u64,
            Workload::CacheScratch => SCRATCH_ITERS as u64,
            _ => UNIT as u64,
        }
    }
}

const UNIT: usize = 1000;
const WINDOW: usize = 100;
const THREADTEST_N: usize = 10_000;
const LARSON_SLOTS: usize = 1000;
const SCRATCH_ITERS: usize = 100;
const SCRATCH_WRITES: usize = 100;
/// Seed of every random sequence (per thread: `SEED + tid`).
pub const SEED: u64 = 0x00C0_FFEE;

/// A run as the workers see it.
pub trait Job: Send + Sync {
    /// Untimed preparation on thread `tid`.
    fn setup(&self, tid: usize);
    /// The timed work on thread `tid`.
    fn run(&self, tid: usize);
    /// Untimed clean-up on thread `tid`.
    fn teardown(&self, tid: usize);
}

/// Per-thread bookkeeping (pointers as addresses), locked once per phase by its owner.
#[derive(Default)]
struct Local {
    ptrs: Vec<usize>,
    sizes: Vec<usize>,
    order: Vec<usize>,
}

struct Run<P: ?Sized> {
    peer: Arc<P>,
    w: Workload,
    reps: u64,
    local: Vec<Mutex<Local>>,
    /// larson: the shared slots (address, size packed as two words); cache-scratch: the objects
    /// handed to the threads.
    shared: Vec<AtomicUsize>,
}

/// Builds the run of `w` for `peer` (called through [`AllocPeer::job`]).
pub fn make_job<P: AllocPeer + ?Sized>(
    peer: Arc<P>,
    w: Workload,
    threads: usize,
    reps: u64,
) -> Arc<dyn Job> {
    let mut shared = Vec::new();
    match w {
        Workload::Larson => {
            shared = (0..threads * LARSON_SLOTS * 2)
                .map(|_| AtomicUsize::new(0))
                .collect()
        }
        Workload::CacheScratch => {
            // allocated together by one thread: neighbours in memory for most allocators
            for _ in 0..threads {
                shared.push(AtomicUsize::new(peer.alloc(8) as usize));
            }
        }
        _ => {}
    }
    Arc::new(Run {
        peer,
        w,
        reps,
        local: (0..threads).map(|_| Mutex::new(Local::default())).collect(),
        shared,
    })
}

#[inline]
fn touch(p: *mut u8, v: usize) {
    assert!(!p.is_null(), "out of memory");
    // SAFETY: `p` is a fresh block of at least 8 bytes, 8-byte aligned.
    unsafe { p.cast::<usize>().write_volatile(v) };
}

impl<P: AllocPeer + ?Sized> Job for Run<P> {
    fn setup(&self, tid: usize) {
        let mut l = self.local[tid].lock().unwrap();
        let p = &*self.peer;
        let mut rng = Rng::new(SEED + tid as u64 * 7919);
        match self.w {
            Workload::Batch64 | Workload::Sh6bench => {
                l.ptrs = vec![0; UNIT];
                l.sizes = (0..UNIT).map(|_| rng.size_log(16, 1024)).collect();
                let mut order: Vec<usize> = (0..UNIT).collect();
                for i in (1..UNIT).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                l.order = order;
            }
            Workload::Threadtest => l.ptrs = vec![0; THREADTEST_N],
            Workload::Mix => {
                l.sizes = (0..WINDOW).map(|_| rng.size_log(16, 4096)).collect();
                l.ptrs = l
                    .sizes
                    .iter()
                    .map(|&s| {
                        let q = p.alloc(s);
                        touch(q, s);
                        q as usize
                    })
                    .collect();
            }
            Workload::Larson => {
                let n = self.shared.len() / 2 / self.local.len();
                for i in tid * n..(tid + 1) * n {
                    let s = rng.size_log(16, 512);
                    let q = p.alloc(s);
                    touch(q, s);
                    self.shared[2 * i].store(q as usize, Ordering::Relaxed);
                }
            }
            Workload::CacheScratch => {
                let q = self.shared[tid].swap(0, Ordering::Relaxed);
                // SAFETY: allocated with 8 bytes in `make_job`, freed once (swapped out).
                unsafe { p.free(q as *mut u8, 8) };
            }
            Workload::Pair64 => {}
        }
    }

    fn run(&self, tid: usize) {
        let mut guard = self.local[tid].lock().unwrap();
        let l = &mut *guard;
        let p = &*self.peer;
        let mut rng = Rng::new((SEED ^ 0xABCD) + tid as u64 * 104_729);
        for rep in 0..self.reps {
            match self.w {
                Workload::Pair64 => {
                    for i in 0..UNIT {
                        let q = p.alloc(64);
                        touch(q, i);
                        // SAFETY: just allocated with 64 bytes.
                        unsafe { p.free(q, 64) };
                    }
                }
                Workload::Batch64 => {
                    for i in 0..UNIT {
                        let q = p.alloc(64);
                        touch(q, i);
                        l.ptrs[i] = q as usize;
                    }
                    for &q in &l.ptrs {
                        // SAFETY: allocated above with 64 bytes, freed once.
                        unsafe { p.free(q as *mut u8, 64) };
                    }
                }
                Workload::Threadtest => {
                    for i in 0..THREADTEST_N {
                        let q = p.alloc(8);
                        touch(q, i);
                        l.ptrs[i] = q as usize;
                    }
                    for &q in &l.ptrs {
                        // SAFETY: allocated above with 8 bytes, freed once.
                        unsafe { p.free(q as *mut u8, 8) };
                    }
                }
                Workload::Mix => {
                    for _ in 0..UNIT {
                        let i = rng.below(WINDOW as u64) as usize;
                        let s = rng.size_log(16, 4096);
                        // SAFETY: the slot holds a live block of `sizes[i]` bytes.
                        unsafe { p.free(l.ptrs[i] as *mut u8, l.sizes[i]) };
                        let q = p.alloc(s);
                        touch(q, s);
                        l.ptrs[i] = q as usize;
                        l.sizes[i] = s;
                    }
                }
                Workload::Sh6bench => {
                    for i in 0..UNIT {
                        let q = p.alloc(l.sizes[i]);
                        touch(q, i);
                        l.ptrs[i] = q as usize;
                    }
                    let free = |i: usize| {
                        // SAFETY: allocated above with `sizes[i]`, each index freed once.
                        unsafe { p.free(l.ptrs[i] as *mut u8, l.sizes[i]) }
                    };
                    match rep % 3 {
                        0 => (0..UNIT).for_each(free),
                        1 => (0..UNIT).rev().for_each(free),
                        _ => l.order.iter().for_each(|&i| free(i)),
                    }
                }
                Workload::Larson => {
                    let n = (self.shared.len() / 2) as u64;
                    for _ in 0..UNIT {
                        let s = rng.size_log(16, 512);
                        let q = p.alloc(s);
                        touch(q, s);
                        // the size travels inside the object (its first word)
                        let i = rng.below(n) as usize;
                        let old = self.shared[2 * i].swap(q as usize, Ordering::AcqRel);
                        if old != 0 {
                            // SAFETY: the slot owned the block; its first word is its size
                            // (written before the swap that published it).
                            unsafe {
                                let os = (old as *const usize).read_volatile();
                                p.free(old as *mut u8, os);
                            }
                        }
                    }
                }
                Workload::CacheScratch => {
                    for _ in 0..SCRATCH_ITERS {
                        let q = p.alloc(8).cast::<usize>();
                        assert!(!q.is_null(), "out of memory");
                        for j in 0..SCRATCH_WRITES {
                            // SAFETY: a live 8-byte block.
                            unsafe { q.write_volatile(q.read_volatile().wrapping_add(j)) };
                        }
                        // SAFETY: allocated above with 8 bytes.
                        unsafe { p.free(q.cast(), 8) };
                    }
                }
            }
        }
    }

    fn teardown(&self, tid: usize) {
        let mut l = self.local[tid].lock().unwrap();
        let p = &*self.peer;
        match self.w {
            Workload::Mix => {
                for (&q, &s) in l.ptrs.iter().zip(&l.sizes) {
                    // SAFETY: the window's live blocks, freed once.
                    unsafe { p.free(q as *mut u8, s) };
                }
                l.ptrs.clear();
            }
            Workload::Larson => {
                let n = self.shared.len() / 2 / self.local.len();
                for i in tid * n..(tid + 1) * n {
                    let q = self.shared[2 * i].swap(0, Ordering::AcqRel);
                    if q != 0 {
                        // SAFETY: a live block swapped out of its slot; first word = size.
                        unsafe { p.free(q as *mut u8, (q as *const usize).read()) };
                    }
                }
            }
            _ => {}
        }
    }
}

type Msg = (
    Arc<dyn Job>,
    usize,
    Arc<Barrier>,
    mpsc::Sender<(Instant, Instant)>,
);

/// Persistent worker threads; thread `t` of every run is always the same OS thread.
#[derive(Debug)]
pub struct Workers {
    txs: Vec<mpsc::Sender<Msg>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` workers.
    pub fn new(n: usize) -> Workers {
        let mut txs = Vec::new();
        let mut handles = Vec::new();
        for t in 0..n {
            let (tx, rx) = mpsc::channel::<Msg>();
            txs.push(tx);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("alloc-worker-{t}"))
                    .spawn(move || {
                        for (job, tid, b, done) in rx {
                            job.setup(tid);
                            b.wait();
                            let start = Instant::now();
                            job.run(tid);
                            let end = Instant::now();
                            b.wait();
                            job.teardown(tid);
                            let _ = done.send((start, end));
                        }
                    })
                    .expect("spawn worker"),
            );
        }
        Workers { txs, handles }
    }

    /// Runs `job` on the first `threads` workers; returns the wall time of the timed phase:
    /// from the first worker's start to the last worker's end, as the workers themselves saw
    /// it (the coordinating thread may be descheduled at any moment on a small machine).
    pub fn time(&self, job: &Arc<dyn Job>, threads: usize) -> Duration {
        assert!(threads <= self.txs.len());
        let b = Arc::new(Barrier::new(threads));
        let (done_tx, done_rx) = mpsc::channel();
        for (t, tx) in self.txs.iter().take(threads).enumerate() {
            tx.send((job.clone(), t, b.clone(), done_tx.clone()))
                .expect("worker alive");
        }
        drop(done_tx);
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        for (s, e) in done_rx.iter().take(threads) {
            first = Some(first.map_or(s, |f| f.min(s)));
            last = Some(last.map_or(e, |l| l.max(e)));
        }
        match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f),
            _ => panic!("a worker died"),
        }
    }

    /// Stops the workers.
    pub fn stop(self) {
        drop(self.txs);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// The result of one (workload, threads, peer) case.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Case {
    /// Workload name.
    pub workload: String,
    /// Threads.
    pub threads: usize,
    /// Peer name.
    pub peer: String,
    /// Units per run (chosen by calibration).
    pub reps: u64,
    /// ns per operation per thread of each trial, in trial order.
    pub trials_ns: Vec<f64>,
    /// Their median.
    pub median_ns: f64,
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Measures every workload at every thread count for every peer: calibration (which also warms
/// up), then `trials` rounds in which the peers take turns, in forward order on even rounds and
/// in reverse order on odd rounds, each run lasting about `target`.
pub fn run_matrix(
    peers: &[Arc<dyn AllocPeer>],
    workloads: &[Workload],
    threads: &[usize],
    trials: usize,
    target: Duration,
    workers: &Workers,
) -> Vec<Case> {
    let mut out = Vec::new();
    for &w in workloads {
        for &t in threads {
            let per = w.ops_per_unit() as f64;
            let mut reps = Vec::new();
            for p in peers {
                // warm-up (first use of the thread caches, heap growth), then two calibration
                // passes; the larger estimate wins, so one slow run cannot make runs too short
                workers.time(&p.clone().job(w, t, 1), t);
                let mut est = 1u64;
                for _ in 0..2 {
                    let mut r = 1u64;
                    let d = loop {
                        let d = workers.time(&p.clone().job(w, t, r), t);
                        if d >= target / 4 || r >= 1 << 24 {
                            break d;
                        }
                        r *= 2;
                    };
                    let scaled = r as f64 * target.as_secs_f64() / d.as_secs_f64().max(1e-9);
                    est = est.max(scaled.ceil() as u64);
                }
                reps.push(est);
            }
            let mut ns = vec![Vec::new(); peers.len()];
            for round in 0..trials {
                let order: Vec<usize> = if round % 2 == 0 {
                    (0..peers.len()).collect()
                } else {
                    (0..peers.len()).rev().collect()
                };
                for i in order {
                    let job = peers[i].clone().job(w, t, reps[i]);
                    let d = workers.time(&job, t);
                    ns[i].push(d.as_nanos() as f64 / (reps[i] as f64 * per));
                }
            }
            for (i, p) in peers.iter().enumerate() {
                let m = median(&ns[i]);
                eprintln!(
                    "  {:<14} {}T {:<20} {:>10.1} ns/op",
                    w.name(),
                    t,
                    p.name(),
                    m
                );
                out.push(Case {
                    workload: w.name().into(),
                    threads: t,
                    peer: p.name().into(),
                    reps: reps[i],
                    trials_ns: ns[i].clone(),
                    median_ns: m,
                });
            }
        }
    }
    out
}
