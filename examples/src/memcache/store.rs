//! The storage interface the protocol layer runs against, shared by the persistent store
//! ([`super::pstore::PmemStore`]) and the reference model ([`super::memstore::MemStore`]).
//!
//! Time is wall-clock seconds since the Unix epoch (so TTLs continue across restarts).
//! Client expiry values are converted once, by [`Expiry::from_client`], with memcached's rules.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest relative expiry memcached accepts (30 days); larger values are absolute Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// Longest key memcached accepts.
pub const KEY_MAX: usize = 250;

/// When an item expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Never (client sent 0).
    Never,
    /// At this Unix time (seconds).
    At(u64),
    /// Already expired (negative, or an absolute time in the past): a store succeeds but the
    /// item is invisible at once.
    Expired,
}

impl Expiry {
    /// memcached's rules: 0 = never; negative = expired; up to 30 days = relative to `now`;
    /// beyond = absolute Unix time (expired if not after `now`).
    pub fn from_client(raw: i64, now: u64) -> Expiry {
        if raw == 0 {
            Expiry::Never
        } else if raw < 0 {
            Expiry::Expired
        } else if raw <= REALTIME_MAXDELTA {
            Expiry::At(now + raw as u64)
        } else if raw as u64 <= now {
            Expiry::Expired
        } else {
            Expiry::At(raw as u64)
        }
    }

    /// The on-media encoding: 0 = never, 1 = expired, else the Unix time.
    pub fn to_raw(self) -> u64 {
        match self {
            Expiry::Never => 0,
            Expiry::Expired => 1,
            Expiry::At(t) => t.max(2),
        }
    }

    /// Inverse of [`Expiry::to_raw`].
    pub fn from_raw(raw: u64) -> Expiry {
        match raw {
            0 => Expiry::Never,
            1 => Expiry::Expired,
            t => Expiry::At(t),
        }
    }

    /// True if an item with this expiry is dead at `now`.
    pub fn is_expired(self, now: u64) -> bool {
        match self {
            Expiry::Never => false,
            Expiry::Expired => true,
            Expiry::At(t) => t <= now,
        }
    }
}

/// The current wall-clock time in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a reader sees of an item (besides its key and value bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemMeta {
    /// Client flags (32-bit opaque).
    pub flags: u32,
    /// CAS unique.
    pub cas: u64,
    /// Expiry.
    pub expiry: Expiry,
    /// Last access, Unix seconds.
    pub last_access: u64,
    /// Fetched at least once before this access.
    pub fetched: bool,
    /// Size class id (for `me`), or 0.
    pub class: u32,
}

/// How a store combines with an existing item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Append to an existing value (flags and expiry of the existing item are kept).
    Append,
    /// Prepend to an existing value (flags and expiry of the existing item are kept).
    Prepend,
}

/// A store request.
#[derive(Clone, Copy, Debug)]
pub struct StoreReq<'a> {
    /// Combination mode.
    pub mode: SetMode,
    /// Key (1..=250 bytes, already validated by the protocol layer).
    pub key: &'a [u8],
    /// Value bytes (without the trailing CRLF).
    pub value: &'a [u8],
    /// Client flags.
    pub flags: u32,
    /// Expiry.
    pub expiry: Expiry,
    /// Compare-and-swap: store only if the current item's CAS equals this. With
    /// [`SetMode::Set`] this is the text protocol's `cas` command.
    pub cas: Option<u64>,
}

/// Result of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored; the new item's CAS.
    Stored(u64),
    /// Condition not met (add on present key, replace/append/prepend on absent key).
    NotStored,
    /// CAS mismatch.
    Exists,
    /// CAS given but the key is absent.
    NotFound,
    /// Item larger than the item size limit.
    TooLarge,
    /// No memory even after eviction.
    NoMemory,
}

/// Result of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Removed.
    Deleted,
    /// Absent.
    NotFound,
    /// CAS mismatch.
    Exists,
}

/// An incr/decr request.
#[derive(Clone, Copy, Debug)]
pub struct ArithReq {
    /// Increment (true) or decrement (false; stops at 0). Increments wrap at 2^64.
    pub incr: bool,
    /// Amount.
    pub delta: u64,
    /// Create the item with this initial value and expiry when absent (meta `N`/`J`).
    pub autovivify: Option<(u64, Expiry)>,
    /// Compare-and-swap.
    pub cas: Option<u64>,
    /// New expiry to set on hit (meta `T`), if any.
    pub touch: Option<Expiry>,
}

impl ArithReq {
    /// A plain `incr`/`decr` of `delta`: no autovivify, CAS or touch.
    pub fn plain(incr: bool, delta: u64) -> ArithReq {
        ArithReq {
            incr,
            delta,
            autovivify: None,
            cas: None,
            touch: None,
        }
    }
}

/// Result of incr/decr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOutcome {
    /// The new value and the item's new CAS.
    Value {
        /// New value.
        value: u64,
        /// New CAS.
        cas: u64,
        /// The item was created by autovivification.
        created: bool,
    },
    /// Absent (and no autovivify).
    NotFound,
    /// The current value is not a decimal number of at most 20 digits.
    NonNumeric,
    /// CAS mismatch.
    Exists,
    /// No memory even after eviction.
    NoMemory,
}

/// Options of a read.
#[derive(Clone, Copy, Debug, Default)]
pub struct GetOpts {
    /// Set a new expiry on hit (gat/gats, meta `T`).
    pub touch: Option<Expiry>,
    /// Do not mark the item fetched or bump it in the LRU (meta `mg` without side effects is
    /// not a memcached feature; this is for `me`).
    pub peek: bool,
}

/// Counters memcached reports in `stats`. The persistent store saves them at a clean shutdown
/// and restores them at the next start (memcached resets them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
#[allow(missing_docs)]
pub enum Ctr {
    CmdGet,
    CmdSet,
    CmdFlush,
    CmdTouch,
    CmdMeta,
    GetHits,
    GetMisses,
    GetExpired,
    GetFlushed,
    DeleteMisses,
    DeleteHits,
    IncrMisses,
    IncrHits,
    DecrMisses,
    DecrHits,
    CasMisses,
    CasHits,
    CasBadval,
    TouchHits,
    TouchMisses,
    TotalItems,
    Evictions,
    Reclaimed,
    ExpiredUnfetched,
    EvictedUnfetched,
    TotalConnections,
    BytesRead,
    BytesWritten,
    AuthCmds,
    AuthErrors,
    RejectedConnections,
    Reserved31,
}

/// Number of counters (the persistent layout reserves exactly this many words).
pub const NCOUNTERS: usize = 32;

/// Counter array, indexed by [`Ctr`].
#[derive(Debug)]
pub struct Counters(pub [AtomicU64; NCOUNTERS]);

impl Default for Counters {
    fn default() -> Self {
        Counters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Counters {
    /// Adds `n` to counter `c`.
    #[inline]
    pub fn add(&self, c: Ctr, n: u64) {
        self.0[c as usize].fetch_add(n, Ordering::Relaxed);
    }
    /// Adds 1 to counter `c`.
    #[inline]
    pub fn incr(&self, c: Ctr) {
        self.add(c, 1);
    }
    /// Reads counter `c`.
    pub fn get(&self, c: Ctr) -> u64 {
        self.0[c as usize].load(Ordering::Relaxed)
    }
    /// All values (for saving).
    pub fn snapshot(&self) -> [u64; NCOUNTERS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
    /// Restores saved values.
    pub fn restore(&self, v: &[u64; NCOUNTERS]) {
        for (a, &x) in self.0.iter().zip(v) {
            a.store(x, Ordering::Relaxed);
        }
    }
}

/// Occupancy figures for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Live items (expired ones not yet reclaimed included, like memcached).
    pub curr_items: u64,
    /// Bytes charged to items (header, key and value).
    pub bytes: u64,
    /// The memory limit (`-m`).
    pub limit_maxbytes: u64,
    /// Hash table buckets.
    pub hash_buckets: u64,
    /// Bytes of the hash table.
    pub hash_bytes: u64,
}

/// The storage engine behind the protocol. All methods are thread-safe and never panic on any
/// input; key length and value size are validated by the protocol layer (the store still
/// enforces the item size limit and answers [`StoreOutcome::TooLarge`]).
pub trait CacheStore: Send + Sync {
    /// Looks `key` up; on a live hit calls `out` with the metadata and value (while the item
    /// is held: keep `out` short, for example a copy into the output buffer) and returns
    /// true. Counters are the caller's business.
    fn get(&self, key: &[u8], opts: GetOpts, out: &mut dyn FnMut(&ItemMeta, &[u8])) -> bool;
    /// Stores.
    fn store(&self, req: &StoreReq<'_>) -> StoreOutcome;
    /// Deletes, optionally only if the CAS matches.
    fn delete(&self, key: &[u8], cas: Option<u64>) -> DeleteOutcome;
    /// incr/decr on a decimal value.
    fn arith(&self, key: &[u8], req: &ArithReq) -> ArithOutcome;
    /// Sets a new expiry; false if absent.
    fn touch(&self, key: &[u8], expiry: Expiry) -> bool;
    /// Invalidates every item now (`delay_secs == 0`) or at `now + delay_secs`.
    fn flush_all(&self, delay_secs: u64);
    /// The shared counters.
    fn counters(&self) -> &Counters;
    /// Occupancy.
    fn occupancy(&self) -> Occupancy;
    /// Extra `stats` lines for a group (`""` general, `"items"`, `"slabs"`): name, value.
    fn stats_group(&self, group: &str) -> Vec<(String, String)>;
    /// Item size limit in bytes (`-I`).
    fn item_size_max(&self) -> usize;
    /// Persists everything and marks the store clean (called once at graceful shutdown; the
    /// store accepts no more writes afterwards).
    fn shutdown(&self);
    /// Background work, called by the server about once a second: reclaiming expired items,
    /// saving counters. Short (bounded work per call). The default does nothing.
    fn maintenance(&self) {}
}
