//! A reference model of [`CacheStore`] in DRAM: one `Mutex<HashMap>`, exact memcached
//! semantics, no eviction. Used by the protocol tests and as the model of the persistent
//! store's property tests; `--store memory` in the server selects it.
//!
//! Semantics worth knowing (all as memcached 1.6 behaves):
//! - CAS values come from one counter starting at 1; every new or modified value takes the
//!   next one (set/add/replace/append/prepend/cas/incr/decr); touch and gat keep the CAS.
//! - append/prepend keep the existing item's flags and expiry; an append whose result would
//!   not fit the item size limit answers [`StoreOutcome::NotStored`] (memcached's answer).
//! - A CAS value is checked by set, replace, append and prepend (absent key: `NotFound` for
//!   set/replace, `NotStored` for append/prepend); add ignores it.
//! - A flush does not consume a CAS value (memcached's `flush_all` does; nothing observable
//!   depends on it).
//! - A set that is too large removes the existing item (memcached does not leave stale data).
//! - incr/decr accept a value of 1 to 20 decimal digits optionally followed by spaces (what
//!   memcached's `strtoull` accepts after its own earlier in-place updates); incr wraps at
//!   2^64, decr stops at 0. The new value is written in decimal; when it is shorter than the
//!   old value it is padded with spaces to the old length (memcached updates in place).
//! - `flush_all(0)` drops everything at once; `flush_all(d)` makes every item last stored
//!   before `now + d` invisible once that time has come (a later flush replaces a pending one).

use super::store::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes memcached charges per item besides key and value (item header, CAS, suffix).
pub const ITEM_OVERHEAD: usize = 50;

/// The size memcached charges for an item: header, key, value and the value's CRLF.
pub fn item_size(nkey: usize, nvalue: usize) -> usize {
    ITEM_OVERHEAD
        .saturating_add(nkey)
        .saturating_add(nvalue)
        .saturating_add(2)
}

/// A clock returning Unix seconds (tests inject their own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone, Debug)]
struct Item {
    value: Vec<u8>,
    flags: u32,
    cas: u64,
    expiry: Expiry,
    /// Last store or modification (flush_all compares against it).
    stored: u64,
    last_access: u64,
    fetched: bool,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Vec<u8>, Item>,
    last_cas: u64,
    /// Pending or past delayed flush: items stored before this time are dead once it comes.
    flush_at: Option<u64>,
    shut: bool,
}

impl Inner {
    fn next_cas(&mut self) -> u64 {
        self.last_cas += 1;
        self.last_cas
    }

    fn dead(&self, it: &Item, now: u64) -> bool {
        if it.expiry.is_expired(now) {
            return true;
        }
        matches!(self.flush_at, Some(f) if f <= now && it.stored < f)
    }

    /// The live item under `key`, dropping a dead one.
    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Item> {
        let dead = match self.map.get(key) {
            None => return None,
            Some(it) => self.dead(it, now),
        };
        if dead {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }
}

/// The DRAM reference store.
pub struct MemStore {
    inner: Mutex<Inner>,
    counters: Counters,
    item_size_max: usize,
    mem_limit: u64,
    clock: Clock,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("item_size_max", &self.item_size_max)
            .field("mem_limit", &self.mem_limit)
            .finish_non_exhaustive()
    }
}

/// Parses a stored value as memcached's incr/decr does: 1..=20 digits, then only spaces.
fn parse_counter(v: &[u8]) -> Option<u64> {
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || v[digits..].iter().any(|&b| b != b' ') {
        return None;
    }
    std::str::from_utf8(&v[..digits]).ok()?.parse().ok()
}

impl MemStore {
    /// A store with the wall clock.
    pub fn new(item_size_max: usize, mem_limit: u64) -> MemStore {
        MemStore::with_clock(item_size_max, mem_limit, Arc::new(unix_now))
    }

    /// A store reading time from `clock` (Unix seconds).
    pub fn with_clock(item_size_max: usize, mem_limit: u64, clock: Clock) -> MemStore {
        MemStore {
            inner: Mutex::new(Inner::default()),
            counters: Counters::default(),
            item_size_max,
            mem_limit,
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn fits(&self, nkey: usize, nvalue: usize) -> bool {
        item_size(nkey, nvalue) <= self.item_size_max
    }
}

impl CacheStore for MemStore {
    fn get(&self, key: &[u8], opts: GetOpts, out: &mut dyn FnMut(&ItemMeta, &[u8])) -> bool {
        let now = self.now();
        let mut g = self.lock();
        let Some(it) = g.live(key, now) else {
            return false;
        };
        if let Some(e) = opts.touch {
            it.expiry = e;
        }
        let meta = ItemMeta {
            flags: it.flags,
            cas: it.cas,
            expiry: it.expiry,
            last_access: it.last_access,
            fetched: it.fetched,
            class: 1,
        };
        out(&meta, &it.value);
        if !opts.peek {
            it.fetched = true;
            it.last_access = now;
        }
        true
    }

    fn store(&self, req: &StoreReq<'_>) -> StoreOutcome {
        let now = self.now();
        let mut g = self.lock();
        if g.shut {
            return StoreOutcome::NoMemory;
        }
        if !self.fits(req.key.len(), req.value.len()) {
            if req.mode == SetMode::Set && req.cas.is_none() {
                g.map.remove(req.key);
            }
            return StoreOutcome::TooLarge;
        }
        let existing = g.live(req.key, now).map(|it| it.cas);
        match req.mode {
            SetMode::Add => {
                // memcached's add ignores a CAS value.
                if existing.is_some() {
                    // memcached bumps the existing item in the LRU (last access).
                    if let Some(it) = g.live(req.key, now) {
                        it.last_access = now;
                    }
                    return StoreOutcome::NotStored;
                }
            }
            SetMode::Set | SetMode::Replace => match (existing, req.cas) {
                (None, Some(_)) => return StoreOutcome::NotFound,
                (Some(c), Some(want)) if c != want => return StoreOutcome::Exists,
                (None, None) if req.mode == SetMode::Replace => return StoreOutcome::NotStored,
                _ => {}
            },
            SetMode::Append | SetMode::Prepend => {
                let fits = match (g.map.get(req.key), existing) {
                    (Some(it), Some(c)) => {
                        if matches!(req.cas, Some(want) if want != c) {
                            return StoreOutcome::Exists;
                        }
                        self.fits(req.key.len(), it.value.len() + req.value.len())
                    }
                    _ => return StoreOutcome::NotStored,
                };
                if !fits {
                    return StoreOutcome::NotStored;
                }
                let cas = g.next_cas();
                let Some(it) = g.map.get_mut(req.key) else {
                    return StoreOutcome::NotStored;
                };
                if req.mode == SetMode::Append {
                    it.value.extend_from_slice(req.value);
                } else {
                    let mut v = Vec::with_capacity(it.value.len() + req.value.len());
                    v.extend_from_slice(req.value);
                    v.extend_from_slice(&it.value);
                    it.value = v;
                }
                it.cas = cas;
                it.stored = now;
                it.last_access = now;
                return StoreOutcome::Stored(cas);
            }
        }
        let cas = g.next_cas();
        g.map.insert(
            req.key.to_vec(),
            Item {
                value: req.value.to_vec(),
                flags: req.flags,
                cas,
                expiry: req.expiry,
                stored: now,
                last_access: now,
                fetched: false,
            },
        );
        StoreOutcome::Stored(cas)
    }

    fn delete(&self, key: &[u8], cas: Option<u64>) -> DeleteOutcome {
        let now = self.now();
        let mut g = self.lock();
        let Some(it) = g.live(key, now) else {
            return DeleteOutcome::NotFound;
        };
        if matches!(cas, Some(c) if c != it.cas) {
            return DeleteOutcome::Exists;
        }
        g.map.remove(key);
        DeleteOutcome::Deleted
    }

    fn arith(&self, key: &[u8], req: &ArithReq) -> ArithOutcome {
        let now = self.now();
        let mut g = self.lock();
        if g.shut {
            return ArithOutcome::NoMemory;
        }
        let Some(it) = g.live(key, now) else {
            let Some((initial, expiry)) = req.autovivify else {
                return ArithOutcome::NotFound;
            };
            let cas = g.next_cas();
            g.map.insert(
                key.to_vec(),
                Item {
                    value: initial.to_string().into_bytes(),
                    flags: 0,
                    cas,
                    expiry,
                    stored: now,
                    last_access: now,
                    fetched: false,
                },
            );
            return ArithOutcome::Value {
                value: initial,
                cas,
                created: true,
            };
        };
        if matches!(req.cas, Some(c) if c != it.cas) {
            return ArithOutcome::Exists;
        }
        let Some(old) = parse_counter(&it.value) else {
            return ArithOutcome::NonNumeric;
        };
        let value = if req.incr {
            old.wrapping_add(req.delta)
        } else {
            old.saturating_sub(req.delta)
        };
        let mut text = value.to_string().into_bytes();
        if text.len() < it.value.len() {
            text.resize(it.value.len(), b' ');
        }
        it.value = text;
        if let Some(e) = req.touch {
            it.expiry = e;
        }
        it.stored = now;
        it.last_access = now;
        let cas = g.next_cas();
        if let Some(it) = g.map.get_mut(key) {
            it.cas = cas;
        }
        ArithOutcome::Value {
            value,
            cas,
            created: false,
        }
    }

    fn touch(&self, key: &[u8], expiry: Expiry) -> bool {
        let now = self.now();
        let mut g = self.lock();
        match g.live(key, now) {
            None => false,
            Some(it) => {
                it.expiry = expiry;
                it.last_access = now;
                it.fetched = true;
                true
            }
        }
    }

    fn flush_all(&self, delay_secs: u64) {
        let now = self.now();
        let mut g = self.lock();
        if delay_secs == 0 {
            g.map.clear();
            g.flush_at = None;
        } else {
            g.flush_at = Some(now.saturating_add(delay_secs));
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn occupancy(&self) -> Occupancy {
        let g = self.lock();
        let bytes = g
            .map
            .iter()
            .map(|(k, it)| item_size(k.len(), it.value.len()) as u64)
            .sum();
        let buckets = (g.map.capacity().max(1) as u64).next_power_of_two();
        Occupancy {
            curr_items: g.map.len() as u64,
            bytes,
            limit_maxbytes: self.mem_limit,
            hash_buckets: buckets,
            hash_bytes: buckets * 8,
        }
    }

    fn stats_group(&self, group: &str) -> Vec<(String, String)> {
        let occ = self.occupancy();
        match group {
            "items" if occ.curr_items > 0 => vec![
                ("items:1:number".into(), occ.curr_items.to_string()),
                ("items:1:evicted".into(), "0".into()),
            ],
            "slabs" => vec![
                (
                    "active_slabs".into(),
                    u64::from(occ.curr_items > 0).to_string(),
                ),
                ("total_malloced".into(), occ.bytes.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    fn item_size_max(&self) -> usize {
        self.item_size_max
    }

    fn shutdown(&self) {
        self.lock().shut = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn clocked() -> (MemStore, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let t2 = t.clone();
        let s = MemStore::with_clock(
            1024 * 1024,
            64 << 20,
            Arc::new(move || t2.load(Ordering::SeqCst)),
        );
        (s, t)
    }

    fn set(s: &MemStore, mode: SetMode, k: &str, v: &str, cas: Option<u64>) -> StoreOutcome {
        s.store(&StoreReq {
            mode,
            key: k.as_bytes(),
            value: v.as_bytes(),
            flags: 7,
            expiry: Expiry::Never,
            cas,
        })
    }

    fn get(s: &MemStore, k: &str) -> Option<(Vec<u8>, ItemMeta)> {
        let mut r = None;
        s.get(k.as_bytes(), GetOpts::default(), &mut |m, v| {
            r = Some((v.to_vec(), *m))
        });
        r
    }

    fn arith(s: &MemStore, k: &str, incr: bool, delta: u64) -> ArithOutcome {
        s.arith(k.as_bytes(), &ArithReq::plain(incr, delta))
    }

    #[test]
    fn cas_sequence_and_modes() {
        let (s, _) = clocked();
        assert_eq!(
            set(&s, SetMode::Set, "a", "1", None),
            StoreOutcome::Stored(1)
        );
        assert_eq!(
            set(&s, SetMode::Add, "a", "1", None),
            StoreOutcome::NotStored
        );
        assert_eq!(
            set(&s, SetMode::Replace, "b", "1", None),
            StoreOutcome::NotStored
        );
        assert_eq!(
            set(&s, SetMode::Append, "a", "2", None),
            StoreOutcome::Stored(2)
        );
        assert_eq!(
            set(&s, SetMode::Prepend, "a", "0", None),
            StoreOutcome::Stored(3)
        );
        assert_eq!(get(&s, "a").unwrap().0, b"012");
        assert_eq!(
            set(&s, SetMode::Set, "a", "x", Some(2)),
            StoreOutcome::Exists
        );
        assert_eq!(
            set(&s, SetMode::Set, "b", "x", Some(2)),
            StoreOutcome::NotFound
        );
        assert_eq!(
            set(&s, SetMode::Set, "a", "x", Some(3)),
            StoreOutcome::Stored(4)
        );
        assert!(s.touch(b"a", Expiry::Never));
        assert_eq!(get(&s, "a").unwrap().1.cas, 4);
        assert_eq!(s.delete(b"a", Some(1)), DeleteOutcome::Exists);
        assert_eq!(s.delete(b"a", None), DeleteOutcome::Deleted);
        assert_eq!(s.delete(b"a", None), DeleteOutcome::NotFound);
    }

    #[test]
    fn arith_rules() {
        let (s, _) = clocked();
        set(&s, SetMode::Set, "n", "10", None);
        assert!(matches!(
            arith(&s, "n", false, 1),
            ArithOutcome::Value { value: 9, .. }
        ));
        assert_eq!(get(&s, "n").unwrap().0, b"9 ");
        assert!(matches!(
            arith(&s, "n", true, 991),
            ArithOutcome::Value { value: 1000, .. }
        ));
        assert_eq!(get(&s, "n").unwrap().0, b"1000");
        assert!(matches!(
            arith(&s, "n", false, 5000),
            ArithOutcome::Value { value: 0, .. }
        ));
        set(&s, SetMode::Set, "m", "18446744073709551615", None);
        assert!(matches!(
            arith(&s, "m", true, 2),
            ArithOutcome::Value { value: 1, .. }
        ));
        set(&s, SetMode::Set, "x", "12a", None);
        assert_eq!(arith(&s, "x", true, 1), ArithOutcome::NonNumeric);
        set(&s, SetMode::Set, "x", "", None);
        assert_eq!(arith(&s, "x", true, 1), ArithOutcome::NonNumeric);
        set(&s, SetMode::Set, "x", "123456789012345678901", None);
        assert_eq!(arith(&s, "x", true, 1), ArithOutcome::NonNumeric);
        assert_eq!(arith(&s, "nope", true, 1), ArithOutcome::NotFound);
    }

    #[test]
    fn expiry_and_flush() {
        let (s, t) = clocked();
        let now = t.load(Ordering::SeqCst);
        s.store(&StoreReq {
            mode: SetMode::Set,
            key: b"e",
            value: b"v",
            flags: 0,
            expiry: Expiry::from_client(10, now),
            cas: None,
        });
        assert!(get(&s, "e").is_some());
        t.fetch_add(10, Ordering::SeqCst);
        assert!(get(&s, "e").is_none());
        set(&s, SetMode::Set, "f", "v", None);
        s.flush_all(5);
        t.fetch_add(2, Ordering::SeqCst);
        set(&s, SetMode::Set, "g", "v", None);
        assert!(get(&s, "f").is_some());
        t.fetch_add(3, Ordering::SeqCst);
        assert!(get(&s, "f").is_none());
        assert!(get(&s, "g").is_none());
        set(&s, SetMode::Set, "h", "v", None);
        assert!(get(&s, "h").is_some());
        s.flush_all(0);
        assert!(get(&s, "h").is_none());
    }

    #[test]
    fn size_limit() {
        let s = MemStore::new(200, 1 << 20);
        let big = "x".repeat(200);
        set(&s, SetMode::Set, "k", "v", None);
        assert_eq!(
            set(&s, SetMode::Set, "k", &big, None),
            StoreOutcome::TooLarge
        );
        assert!(get(&s, "k").is_none());
        set(&s, SetMode::Set, "k", &"y".repeat(100), None);
        assert_eq!(
            set(&s, SetMode::Append, "k", &"y".repeat(100), None),
            StoreOutcome::NotStored
        );
    }
}
