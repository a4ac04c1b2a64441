//! The persistent backend of `pmem-redis`: the whole keyspace lives in a pool, built from the
//! persistent collections of `pmem_alloc::collections`, and every command that changes it is
//! one transaction, committed (durable) before the reply is sent.
//!
//! # Layout (all in the pool; the collections' own layouts are in docs/format.md)
//! The pool root is a `DbRoot`: a magic word and a version, the keyspace
//! `PHashMap<PBytes, Entry>` (key bytes to entry) and the expiry index
//! `POrdMap<PBytes, ()>`, whose keys are the 8-byte big-endian expiry time followed by the key
//! (so the index is ordered by time, and the keys due first are its first entries). An
//! `Entry` is 32 bytes: the kind, the expiry (Unix ms, 0 = none), a `PBytes` for a string and
//! a pointer to the header block of any other kind:
//!
//! | kind | object |
//! |---|---|
//! | string | the `PBytes` in the entry |
//! | list | `PDeque<PBytes>` |
//! | hash | `PHashMap<PBytes, PBytes>` (field to value) |
//! | set | `PHashMap<PBytes, ()>` |
//! | sorted set | `ZSet`: `POrdMap<PBytes, ()>` keyed by `encode_score(score) ++ member` (ordered as Redis orders: score, then member bytes) and `PHashMap<PBytes, f64>` (member to score) |
//!
//! # Consistency
//! A command runs under one lock (commands are serialised, as in Redis) in one transaction:
//! all of a command's effects (an `MSET` of many keys, a `ZADD` that moves a member, a pop that
//! empties and deletes a list) are durable together at its commit or, after a crash, absent
//! together. A command that fails (wrong type, overflow, pool full) rolls back and changes
//! nothing. Restart is an open of the pool: no log or snapshot is replayed; after a crash the
//! open rolls back the one transaction that was running and runs the pool's recovery scan.

use super::db::{Db, DbError, DbResult, Expiry, KeyType, SetCond};
use super::memdb::parse_i64_strict;
use pmem_alloc::collections::{
    decode_score, encode_score, PBytes, PDeque, PFree, PHashMap, POrdMap,
};
use pmem_alloc::persist::Persist;
use pmem_alloc::pool::{Pool, PoolError, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::tx::{Tx, TxError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The pool's layout name: a pool of another application is refused.
pub const LAYOUT: &str = "pmem-redis";
const MAGIC: u64 = u64::from_le_bytes(*b"PMREDIS\x01");
const VERSION: u64 = 1;

const K_STR: u32 = 1;
const K_LIST: u32 = 2;
const K_HASH: u32 = 3;
const K_SET: u32 = 4;
const K_ZSET: u32 = 5;

/// The pool root.
#[repr(C)]
struct DbRoot {
    magic: u64,
    version: u64,
    keys: PHashMap<PBytes, Entry>,
    expires: POrdMap<PBytes, ()>,
}
// SAFETY: repr(C), fixed-width integers and collection headers (PSafe).
unsafe impl PSafe for DbRoot {}
const _: () = assert!(std::mem::size_of::<DbRoot>() == 112);

/// One key's value.
#[repr(C)]
struct Entry {
    kind: u32,
    _pad: u32,
    /// Unix ms; 0: no expiry.
    expire_at: u64,
    /// The value of a string.
    s: PBytes,
    /// The header block of a list, hash, set or sorted set.
    obj: PPtr<u8>,
}
// SAFETY: repr(C), fixed-width fields, PSafe members.
unsafe impl PSafe for Entry {}
const _: () = assert!(std::mem::size_of::<Entry>() == 32);

/// A sorted set's two indexes.
#[repr(C)]
#[derive(Default)]
struct ZSet {
    by_score: POrdMap<PBytes, ()>,
    scores: PHashMap<PBytes, f64>,
}
// SAFETY: repr(C), collection headers.
unsafe impl PSafe for ZSet {}

impl PFree for ZSet {
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.by_score.free_in(tx)?;
        self.scores.free_in(tx)
    }
}

type List = PDeque<PBytes>;
type Hash = PHashMap<PBytes, PBytes>;
type Set = PHashMap<PBytes, ()>;

/// Frees a collection object (its contents, then its header block) whose header this
/// transaction has not borrowed.
fn free_obj<T: PFree, P: Persist + 'static>(tx: &Tx<'_, P>, obj: PPtr<u8>) -> Result<(), TxError> {
    let p = obj.cast::<T>();
    let hdr: &T = tx.get(p)?;
    // SAFETY: a bitwise copy of the header, consumed by `free_in`; the header block itself
    // is freed (at commit) right after, so the original is never used again.
    let owned = unsafe { std::ptr::read(hdr) };
    owned.free_in(tx)?;
    // SAFETY: the block was allocated for this entry, which is being dropped in this
    // transaction; freed once, at commit.
    unsafe { tx.free(p) }
}

/// Frees a collection object whose header this transaction holds as `hdr`.
fn free_borrowed<T: PFree, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    hdr: &mut T,
    obj: PPtr<u8>,
) -> Result<(), TxError> {
    // SAFETY: as in `free_obj`; the caller drops its reference right after.
    let owned = unsafe { std::ptr::read(hdr as *const T) };
    owned.free_in(tx)?;
    // SAFETY: as in `free_obj`.
    unsafe { tx.free(obj.cast::<T>()) }
}

impl PFree for Entry {
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        match self.kind {
            K_STR => self.s.free_in(tx),
            K_LIST => free_obj::<List, P>(tx, self.obj),
            K_HASH => free_obj::<Hash, P>(tx, self.obj),
            K_SET => free_obj::<Set, P>(tx, self.obj),
            K_ZSET => free_obj::<ZSet, P>(tx, self.obj),
            _ => Err(TxError::Corrupt),
        }
    }
}

/// Why a command's transaction ended without committing.
enum Fail {
    Tx(TxError),
    Db(DbError),
}

impl From<TxError> for Fail {
    fn from(e: TxError) -> Self {
        Fail::Tx(e)
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Fail::Db(e)
    }
}

impl From<Fail> for DbError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Db(e) => e,
            Fail::Tx(TxError::OutOfSpace) => DbError::OutOfMemory,
            Fail::Tx(e) => DbError::Storage(format!("pool: {e}")),
        }
    }
}

type R<T> = Result<T, Fail>;

/// The expiry time of an index key (`None`: shorter than its 8-byte time, i.e. corrupt).
fn index_time(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?))
}

/// The key of the first entry of the expiry index if it is due at `now_ms` (a corrupt entry
/// is never due).
fn first_due<P: Persist + 'static>(tx: &Tx<'_, P>, r: &DbRoot, now_ms: u64) -> R<Option<Vec<u8>>> {
    Ok(match r.expires.first(tx)? {
        Some((k, _)) => {
            let b = k.as_bytes(tx)?;
            index_time(b)
                .is_some_and(|at| at <= now_ms)
                .then(|| b[8..].to_vec())
        }
        None => None,
    })
}

fn index_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn zkey(score: f64, member: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + member.len());
    k.extend_from_slice(&encode_score(score));
    k.extend_from_slice(member);
    k
}

fn split_zkey(k: &[u8]) -> R<(f64, &[u8])> {
    if k.len() < 8 {
        return Err(TxError::Corrupt.into());
    }
    let (s, m) = k.split_at(8);
    Ok((decode_score(s.try_into().expect("8 bytes")), m))
}

fn is_live(e: &Entry, now_ms: u64) -> bool {
    e.expire_at == 0 || e.expire_at > now_ms
}

/// The live entry of `key` (expired keys read as absent).
fn live<'a, P: Persist + 'static>(
    tx: &'a Tx<'_, P>,
    r: &'a DbRoot,
    key: &[u8],
    now_ms: u64,
) -> R<Option<&'a Entry>> {
    Ok(r.keys.get(tx, key)?.filter(|e| is_live(e, now_ms)))
}

/// The live entry of `key` if it has `kind`; `WrongType` for another kind.
fn live_of<'a, P: Persist + 'static>(
    tx: &'a Tx<'_, P>,
    r: &'a DbRoot,
    key: &[u8],
    kind: u32,
    now_ms: u64,
) -> R<Option<&'a Entry>> {
    match live(tx, r, key, now_ms)? {
        Some(e) if e.kind != kind => Err(DbError::WrongType.into()),
        other => Ok(other),
    }
}

fn bytes_of<P: Persist + 'static>(tx: &Tx<'_, P>, b: &PBytes) -> R<Vec<u8>> {
    Ok(b.as_bytes(tx)?.to_vec())
}

/// Removes `key` from the keyspace and the expiry index and returns its entry (the caller
/// frees it, or has freed its object already).
fn unlink<P: Persist + 'static>(tx: &Tx<'_, P>, r: &mut DbRoot, key: &[u8]) -> R<Option<Entry>> {
    let Some(e) = r.keys.remove(tx, key)? else {
        return Ok(None);
    };
    if e.expire_at != 0 {
        r.expires.remove(tx, &index_key(e.expire_at, key))?;
    }
    Ok(Some(e))
}

/// Deletes `key` (any kind) and frees its value. Returns whether it existed.
fn delete<P: Persist + 'static>(tx: &Tx<'_, P>, r: &mut DbRoot, key: &[u8]) -> R<bool> {
    match unlink(tx, r, key)? {
        Some(e) => {
            e.free_in(tx)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Deletes `key` if it has expired (writes then see it as absent and may create it anew).
fn purge<P: Persist + 'static>(tx: &Tx<'_, P>, r: &mut DbRoot, key: &[u8], now_ms: u64) -> R<()> {
    let expired = matches!(r.keys.get(tx, key)?, Some(e) if !is_live(e, now_ms));
    if expired {
        delete(tx, r, key)?;
    }
    Ok(())
}

/// Changes the expiry of the existing entry of `key` (index included).
fn set_expire<P: Persist + 'static>(tx: &Tx<'_, P>, r: &mut DbRoot, key: &[u8], at: u64) -> R<()> {
    let Some(e) = r.keys.get_mut(tx, key)? else {
        return Ok(());
    };
    let old = e.expire_at;
    if old == at {
        return Ok(());
    }
    e.expire_at = at;
    if old != 0 {
        r.expires.remove(tx, &index_key(old, key))?;
    }
    if at != 0 {
        r.expires.insert(tx, &index_key(at, key), ())?;
    }
    Ok(())
}

/// Creates `key` as an empty collection of `kind` (the key must be absent) and returns its
/// object pointer.
fn create_obj<T: Default + PSafe, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    r: &mut DbRoot,
    key: &[u8],
    kind: u32,
) -> R<PPtr<T>> {
    let obj = tx.alloc(T::default())?;
    let e = Entry {
        kind,
        _pad: 0,
        expire_at: 0,
        s: PBytes::default(),
        obj: obj.cast(),
    };
    r.keys.insert(tx, key, e)?;
    Ok(obj)
}

/// The object of `key` of `kind`, created empty if the key is absent.
fn obj_or_create<T: Default + PSafe, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    r: &mut DbRoot,
    key: &[u8],
    kind: u32,
    now_ms: u64,
) -> R<PPtr<T>> {
    purge(tx, r, key, now_ms)?;
    match r.keys.get(tx, key)? {
        Some(e) if e.kind != kind => Err(DbError::WrongType.into()),
        Some(e) => Ok(e.obj.cast()),
        None => create_obj::<T, P>(tx, r, key, kind),
    }
}

/// After removing elements: deletes the key when its collection `hdr` became empty.
fn drop_if_empty<T: PFree, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    r: &mut DbRoot,
    key: &[u8],
    hdr: &mut T,
    empty: bool,
) -> R<()> {
    if empty {
        if let Some(e) = unlink(tx, r, key)? {
            free_borrowed(tx, hdr, e.obj)?;
        }
    }
    Ok(())
}

/// Stores a string value under `key`, replacing any value of any kind (expiry as given).
fn store_string<P: Persist + 'static>(
    tx: &Tx<'_, P>,
    r: &mut DbRoot,
    key: &[u8],
    value: &[u8],
    expire_at: u64,
) -> R<()> {
    let s = PBytes::new(tx, value)?;
    match r.keys.get_mut(tx, key)? {
        Some(e) if e.kind == K_STR => {
            let old = std::mem::replace(&mut e.s, s);
            old.free_in(tx)?;
        }
        Some(e) => {
            let (kind, obj) = (e.kind, e.obj);
            e.kind = K_STR;
            e.s = s;
            e.obj = PPtr::null();
            let old = Entry {
                kind,
                _pad: 0,
                expire_at: 0,
                s: PBytes::default(),
                obj,
            };
            old.free_in(tx)?;
        }
        None => {
            let e = Entry {
                kind: K_STR,
                _pad: 0,
                expire_at: 0,
                s,
                obj: PPtr::null(),
            };
            r.keys.insert(tx, key, e)?;
        }
    }
    set_expire(tx, r, key, expire_at)
}

/// The open pool and its root.
struct Inner<P: Persist + 'static> {
    pool: Pool<P>,
    root: PPtr<DbRoot>,
}

/// The persistent keyspace.
///
/// # Examples
/// ```
/// use pmem_examples::resp::db::{Db, Expiry, SetCond};
/// use pmem_examples::resp::pdb::PmemDb;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("redis.pool");
/// {
///     let (db, _) = PmemDb::open(&path, 32 << 20)?;
///     db.set(b"k", b"v", SetCond::Always, Expiry::Clear, 0)?;
///     db.push(b"l", &[b"a", b"b"], false, 0)?;
/// } // closed cleanly
/// let (db, _) = PmemDb::open(&path, 32 << 20)?;
/// assert_eq!(db.get(b"k", 0)?, Some(b"v".to_vec()));
/// assert_eq!(db.lrange(b"l", 0, -1, 0)?, vec![b"a".to_vec(), b"b".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PmemDb<P: Persist + 'static = pmem_alloc::persist::Hardware> {
    inner: Mutex<Option<Inner<P>>>,
    path: PathBuf,
}

impl<P: Persist + 'static> std::fmt::Debug for PmemDb<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PmemDb").field("path", &self.path).finish()
    }
}

/// Why the keyspace could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The pool could not be created or opened (damaged, locked, another application's, ...).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// The root is not a keyspace of this version.
    #[error("{path}: {what}")]
    Format {
        /// Pool file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Initialising a new keyspace failed.
    #[error("initialising the keyspace: {0}")]
    Init(#[from] TxError),
}

impl PmemDb {
    /// Opens the keyspace in the pool file `path`, creating a pool of `size` bytes if the file
    /// does not exist. Returns the keyspace and a line for the log (clean or recovered open,
    /// keys, time). A pool that is damaged, locked by another process or belongs to another
    /// application is an error: the data is left as it is.
    pub fn open(path: &Path, size: u64) -> Result<(PmemDb, String), OpenError> {
        let t0 = std::time::Instant::now();
        let opts = PoolOptions {
            layout: LAYOUT.into(),
            ..PoolOptions::default()
        };
        let (pool, created) = if path.exists() {
            (Pool::open(path, &opts)?, false)
        } else {
            (Pool::create(path, size, &opts)?, true)
        };
        let clean = pool.open_report().clean;
        let db = Self::from_pool(pool, path)?;
        let keys = db.read(|_, r| Ok(r.keys.len())).unwrap_or(0);
        let how = if created {
            "created"
        } else if clean {
            "reopened after a clean shutdown"
        } else {
            "recovered after a crash"
        };
        let msg = format!(
            "pool {} {how}: {keys} keys, {:.1} ms",
            path.display(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok((db, msg))
    }
}

impl<P: Persist + 'static> PmemDb<P> {
    /// The keyspace in an open pool (initialised if the pool is new). Crash tests use it with
    /// simulated media.
    pub fn from_pool(pool: Pool<P>, path: &Path) -> Result<Self, OpenError> {
        let root = pool.root::<DbRoot>()?;
        let r = pool.get(root).ok_or_else(|| OpenError::Format {
            path: path.into(),
            what: "root outside the pool".into(),
        })?;
        // SAFETY: the root block lies in the pool; nothing else uses the pool yet.
        let (magic, version) = unsafe { ((*r).magic, (*r).version) };
        if magic == 0 {
            pool.transaction(|tx| {
                let r = tx.get_mut(root)?;
                r.magic = MAGIC;
                r.version = VERSION;
                Ok::<_, TxError>(())
            })?;
        } else if magic != MAGIC || version != VERSION {
            return Err(OpenError::Format {
                path: path.into(),
                what: format!("not a pmem-redis keyspace of version {VERSION} (magic {magic:#x}, version {version})"),
            });
        }
        Ok(PmemDb {
            inner: Mutex::new(Some(Inner { pool, root })),
            path: path.into(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Inner<P>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` as one transaction on the open pool under the lock.
    fn transaction<T>(&self, f: impl FnOnce(&Tx<'_, P>, PPtr<DbRoot>) -> R<T>) -> DbResult<T> {
        let g = self.lock();
        let Some(inner) = g.as_ref() else {
            return Err(DbError::Storage("the keyspace is closed".into()));
        };
        inner
            .pool
            .transaction(|tx| f(tx, inner.root))
            .map_err(DbError::from)
    }

    /// Runs `f` in one transaction, the root borrowed shared (a transaction that saves
    /// nothing costs no fence).
    fn read<T>(&self, f: impl FnOnce(&Tx<'_, P>, &DbRoot) -> R<T>) -> DbResult<T> {
        self.transaction(|tx, root| f(tx, tx.get(root)?))
    }

    /// Runs `f` as one write transaction: committed (durable) when it returns `Ok`, rolled
    /// back when it fails.
    fn write<T>(&self, f: impl FnOnce(&Tx<'_, P>, &mut DbRoot) -> R<T>) -> DbResult<T> {
        self.transaction(|tx, root| f(tx, tx.get_mut(root)?))
    }

    /// `SET`, and with `want_old` `SET ... GET` (which refuses a key of another kind).
    fn set_impl(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
        want_old: bool,
    ) -> DbResult<(bool, Option<Vec<u8>>)> {
        self.write(|tx, r| {
            purge(tx, r, key, now_ms)?;
            let (exists, old, old_exp) = match r.keys.get(tx, key)? {
                Some(e) if e.kind == K_STR => {
                    let old = if want_old {
                        Some(bytes_of(tx, &e.s)?)
                    } else {
                        None
                    };
                    (true, old, e.expire_at)
                }
                Some(_) if want_old => return Err(DbError::WrongType.into()),
                Some(e) => (true, None, e.expire_at),
                None => (false, None, 0),
            };
            let ok = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => !exists,
                SetCond::IfPresent => exists,
            };
            if ok {
                let at = match expiry {
                    Expiry::Keep => old_exp,
                    Expiry::Clear => 0,
                    Expiry::At(ms) => ms.max(1),
                };
                if at != 0 && at <= now_ms {
                    // stored and expired at once: nothing to keep (Redis deletes the key)
                    delete(tx, r, key)?;
                } else {
                    store_string(tx, r, key, value, at)?;
                }
            }
            Ok((ok, old))
        })
    }

    /// Checks the pool's allocator state (tests).
    pub fn check(&self) -> Result<(), String> {
        let mut g = self.lock();
        let Some(inner) = g.as_mut() else {
            return Err("closed".into());
        };
        inner.pool.check().map(drop).map_err(|e| e.to_string())
    }

    /// Closes the pool cleanly (the next open skips recovery); later calls fail.
    pub fn close(&self) {
        let inner = self.lock().take();
        if let Some(i) = inner {
            let _ = i.pool.close();
        }
    }
}

impl<P: Persist + 'static> Db for PmemDb<P> {
    fn dbsize(&self, now_ms: u64) -> u64 {
        self.read(|tx, r| {
            let mut expired = 0u64;
            for e in r.expires.iter(tx)? {
                let (k, _) = e?;
                if index_time(k.as_bytes(tx)?).is_none_or(|at| at > now_ms) {
                    break;
                }
                expired += 1;
            }
            Ok(r.keys.len() as u64 - expired.min(r.keys.len() as u64))
        })
        .unwrap_or(0)
    }

    fn exists(&self, key: &[u8], now_ms: u64) -> bool {
        self.read(|tx, r| Ok(live(tx, r, key, now_ms)?.is_some()))
            .unwrap_or(false)
    }

    fn del(&self, key: &[u8], now_ms: u64) -> DbResult<bool> {
        self.write(|tx, r| {
            purge(tx, r, key, now_ms)?;
            delete(tx, r, key)
        })
    }

    fn flushall(&self) -> DbResult<()> {
        self.write(|tx, r| {
            r.keys.clear(tx)?;
            r.expires.clear(tx)?;
            Ok(())
        })
    }

    fn set_expiry(&self, key: &[u8], at_ms: Option<u64>, now_ms: u64) -> DbResult<bool> {
        self.write(|tx, r| {
            purge(tx, r, key, now_ms)?;
            if r.keys.get(tx, key)?.is_none() {
                return Ok(false);
            }
            match at_ms {
                // a time already past deletes the key at once, as Redis does
                Some(at) if at <= now_ms => {
                    delete(tx, r, key)?;
                }
                Some(at) => set_expire(tx, r, key, at)?,
                None => set_expire(tx, r, key, 0)?,
            }
            Ok(true)
        })
    }

    fn expiry(&self, key: &[u8], now_ms: u64) -> Option<Option<u64>> {
        self.read(|tx, r| {
            Ok(live(tx, r, key, now_ms)?.map(|e| (e.expire_at != 0).then_some(e.expire_at)))
        })
        .ok()
        .flatten()
    }

    fn get(&self, key: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        self.read(|tx, r| match live_of(tx, r, key, K_STR, now_ms)? {
            Some(e) => Ok(Some(bytes_of(tx, &e.s)?)),
            None => Ok(None),
        })
    }

    fn set(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<bool> {
        self.set_impl(key, value, cond, expiry, now_ms, false)
            .map(|(stored, _)| stored)
    }

    fn set_get(
        &self,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        expiry: Expiry,
        now_ms: u64,
    ) -> DbResult<(bool, Option<Vec<u8>>)> {
        self.set_impl(key, value, cond, expiry, now_ms, true)
    }

    fn mset(&self, pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<()> {
        self.write(|tx, r| {
            for &(k, v) in pairs {
                purge(tx, r, k, now_ms)?;
                store_string(tx, r, k, v, 0)?;
            }
            Ok(())
        })
    }

    fn incr_by(&self, key: &[u8], delta: i64, now_ms: u64) -> DbResult<i64> {
        self.write(|tx, r| {
            purge(tx, r, key, now_ms)?;
            let (cur, exp) = match r.keys.get(tx, key)? {
                Some(e) if e.kind != K_STR => return Err(DbError::WrongType.into()),
                Some(e) => (
                    parse_i64_strict(e.s.as_bytes(tx)?).ok_or(DbError::NotInteger)?,
                    e.expire_at,
                ),
                None => (0, 0),
            };
            let n = cur.checked_add(delta).ok_or(DbError::Overflow)?;
            store_string(tx, r, key, n.to_string().as_bytes(), exp)?;
            Ok(n)
        })
    }

    fn push(&self, key: &[u8], values: &[&[u8]], front: bool, now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let obj = obj_or_create::<List, P>(tx, r, key, K_LIST, now_ms)?;
            let l = tx.get_mut(obj)?;
            for v in values {
                let b = PBytes::new(tx, v)?;
                if front {
                    l.push_front(tx, b)?;
                } else {
                    l.push_back(tx, b)?;
                }
            }
            Ok(l.len() as u64)
        })
    }

    fn pop(&self, key: &[u8], front: bool, count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.write(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_LIST, now_ms)? else {
                return Ok(Vec::new());
            };
            let l = tx.get_mut(e.obj.cast::<List>())?;
            let mut out = Vec::new();
            while out.len() < count {
                let b = if front {
                    l.pop_front(tx)?
                } else {
                    l.pop_back(tx)?
                };
                let Some(b) = b else { break };
                out.push(bytes_of(tx, &b)?);
                b.free_in(tx)?;
            }
            let empty = l.is_empty();
            drop_if_empty(tx, r, key, l, empty)?;
            Ok(out)
        })
    }

    fn lrange(&self, key: &[u8], start: i64, stop: i64, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_LIST, now_ms)? else {
                return Ok(Vec::new());
            };
            let l = tx.get(e.obj.cast::<List>())?;
            let range = super::db::resolve_range(start, stop, l.len());
            let mut out = Vec::with_capacity(range.len());
            for b in l.range(tx, range)? {
                out.push(bytes_of(tx, b)?);
            }
            Ok(out)
        })
    }

    fn lrange_reply(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DbResult<()> {
        let mark = out.len();
        let r = self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_LIST, now_ms)? else {
                super::proto::reply::array(out, 0);
                return Ok(());
            };
            let l = tx.get(e.obj.cast::<List>())?;
            let range = super::db::resolve_range(start, stop, l.len());
            super::proto::reply::array(out, range.len());
            for b in l.range(tx, range)? {
                super::proto::reply::bulk(out, b.as_bytes(tx)?);
            }
            Ok(())
        });
        if r.is_err() {
            out.truncate(mark);
        }
        r
    }

    fn llen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.read(|tx, r| match live_of(tx, r, key, K_LIST, now_ms)? {
            Some(e) => Ok(tx.get(e.obj.cast::<List>())?.len() as u64),
            None => Ok(0),
        })
    }

    fn hset(&self, key: &[u8], pairs: &[(&[u8], &[u8])], now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let obj = obj_or_create::<Hash, P>(tx, r, key, K_HASH, now_ms)?;
            let h = tx.get_mut(obj)?;
            let mut added = 0;
            for &(f, v) in pairs {
                let b = PBytes::new(tx, v)?;
                match h.insert(tx, f, b)? {
                    Some(old) => old.free_in(tx)?,
                    None => added += 1,
                }
            }
            Ok(added)
        })
    }

    fn hget(&self, key: &[u8], field: &[u8], now_ms: u64) -> DbResult<Option<Vec<u8>>> {
        self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_HASH, now_ms)? else {
                return Ok(None);
            };
            let h = tx.get(e.obj.cast::<Hash>())?;
            match h.get(tx, field)? {
                Some(v) => Ok(Some(bytes_of(tx, v)?)),
                None => Ok(None),
            }
        })
    }

    fn hdel(&self, key: &[u8], fields: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_HASH, now_ms)? else {
                return Ok(0);
            };
            let h = tx.get_mut(e.obj.cast::<Hash>())?;
            let mut n = 0;
            for f in fields {
                if let Some(v) = h.remove(tx, f)? {
                    v.free_in(tx)?;
                    n += 1;
                }
            }
            let empty = h.is_empty();
            drop_if_empty(tx, r, key, h, empty)?;
            Ok(n)
        })
    }

    fn hgetall(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_HASH, now_ms)? else {
                return Ok(Vec::new());
            };
            let h = tx.get(e.obj.cast::<Hash>())?;
            let mut out = Vec::with_capacity(h.len());
            for kv in h.iter(tx)? {
                let (k, v) = kv?;
                out.push((bytes_of(tx, k)?, bytes_of(tx, v)?));
            }
            Ok(out)
        })
    }

    fn hlen(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.read(|tx, r| match live_of(tx, r, key, K_HASH, now_ms)? {
            Some(e) => Ok(tx.get(e.obj.cast::<Hash>())?.len() as u64),
            None => Ok(0),
        })
    }

    fn sadd(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let obj = obj_or_create::<Set, P>(tx, r, key, K_SET, now_ms)?;
            let s = tx.get_mut(obj)?;
            let mut added = 0;
            for m in members {
                if !s.contains_key(tx, m)? {
                    s.insert(tx, m, ())?;
                    added += 1;
                }
            }
            Ok(added)
        })
    }

    fn srem(&self, key: &[u8], members: &[&[u8]], now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_SET, now_ms)? else {
                return Ok(0);
            };
            let s = tx.get_mut(e.obj.cast::<Set>())?;
            let mut n = 0;
            for m in members {
                if s.remove(tx, m)?.is_some() {
                    n += 1;
                }
            }
            let empty = s.is_empty();
            drop_if_empty(tx, r, key, s, empty)?;
            Ok(n)
        })
    }

    fn smembers(&self, key: &[u8], now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_SET, now_ms)? else {
                return Ok(Vec::new());
            };
            let s = tx.get(e.obj.cast::<Set>())?;
            let mut out = Vec::with_capacity(s.len());
            for kv in s.iter(tx)? {
                out.push(bytes_of(tx, kv?.0)?);
            }
            Ok(out)
        })
    }

    fn sismember(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<bool> {
        self.read(|tx, r| match live_of(tx, r, key, K_SET, now_ms)? {
            Some(e) => Ok(tx.get(e.obj.cast::<Set>())?.contains_key(tx, member)?),
            None => Ok(false),
        })
    }

    fn spop(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<Vec<u8>>> {
        self.write(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_SET, now_ms)? else {
                return Ok(Vec::new());
            };
            let s = tx.get_mut(e.obj.cast::<Set>())?;
            // Random members: a random start in iteration order, then consecutive ones.
            let n = s.len();
            let take = count.min(n);
            let skip = if n > take {
                (pmem_examples_rand() % (n - take + 1) as u64) as usize
            } else {
                0
            };
            let mut picked = Vec::with_capacity(take);
            for kv in s.iter(tx)?.skip(skip).take(take) {
                picked.push(bytes_of(tx, kv?.0)?);
            }
            for m in &picked {
                s.remove(tx, m)?;
            }
            let empty = s.is_empty();
            drop_if_empty(tx, r, key, s, empty)?;
            Ok(picked)
        })
    }

    fn scard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.read(|tx, r| match live_of(tx, r, key, K_SET, now_ms)? {
            Some(e) => Ok(tx.get(e.obj.cast::<Set>())?.len() as u64),
            None => Ok(0),
        })
    }

    fn zadd(&self, key: &[u8], pairs: &[(f64, &[u8])], now_ms: u64) -> DbResult<u64> {
        self.write(|tx, r| {
            let obj = obj_or_create::<ZSet, P>(tx, r, key, K_ZSET, now_ms)?;
            let z = tx.get_mut(obj)?;
            let mut added = 0;
            for &(score, member) in pairs {
                match z.scores.get_mut(tx, member)? {
                    Some(old) if *old == score => {}
                    Some(old) => {
                        let prev = std::mem::replace(old, score);
                        z.by_score.remove(tx, &zkey(prev, member))?;
                        z.by_score.insert(tx, &zkey(score, member), ())?;
                    }
                    None => {
                        z.scores.insert(tx, member, score)?;
                        z.by_score.insert(tx, &zkey(score, member), ())?;
                        added += 1;
                    }
                }
            }
            Ok(added)
        })
    }

    fn zrange(
        &self,
        key: &[u8],
        start: i64,
        stop: i64,
        now_ms: u64,
    ) -> DbResult<Vec<(Vec<u8>, f64)>> {
        self.read(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_ZSET, now_ms)? else {
                return Ok(Vec::new());
            };
            let z = tx.get(e.obj.cast::<ZSet>())?;
            let range = super::db::resolve_range(start, stop, z.by_score.len());
            let mut out = Vec::with_capacity(range.len());
            for kv in z.by_score.range_by_rank(tx, range)? {
                let k = kv?.0.as_bytes(tx)?;
                let (score, member) = split_zkey(k)?;
                out.push((member.to_vec(), score));
            }
            Ok(out)
        })
    }

    fn zpopmin(&self, key: &[u8], count: usize, now_ms: u64) -> DbResult<Vec<(Vec<u8>, f64)>> {
        self.write(|tx, r| {
            let Some(e) = live_of(tx, r, key, K_ZSET, now_ms)? else {
                return Ok(Vec::new());
            };
            let z = tx.get_mut(e.obj.cast::<ZSet>())?;
            let mut out = Vec::new();
            while out.len() < count {
                let Some((k, ())) = z.by_score.pop_first(tx)? else {
                    break;
                };
                let (score, member) = {
                    let (s, m) = split_zkey(k.as_bytes(tx)?)?;
                    (s, m.to_vec())
                };
                k.free_in(tx)?;
                z.scores.remove(tx, &member)?;
                out.push((member, score));
            }
            let empty = z.by_score.is_empty();
            drop_if_empty(tx, r, key, z, empty)?;
            Ok(out)
        })
    }

    fn zcard(&self, key: &[u8], now_ms: u64) -> DbResult<u64> {
        self.read(|tx, r| match live_of(tx, r, key, K_ZSET, now_ms)? {
            Some(e) => Ok(tx.get(e.obj.cast::<ZSet>())?.by_score.len() as u64),
            None => Ok(0),
        })
    }

    fn zscore(&self, key: &[u8], member: &[u8], now_ms: u64) -> DbResult<Option<f64>> {
        self.read(|tx, r| match live_of(tx, r, key, K_ZSET, now_ms)? {
            Some(e) => Ok(tx
                .get(e.obj.cast::<ZSet>())?
                .scores
                .get(tx, member)?
                .copied()),
            None => Ok(None),
        })
    }

    fn key_type(&self, key: &[u8], now_ms: u64) -> Option<KeyType> {
        self.read(|tx, r| {
            Ok(live(tx, r, key, now_ms)?.and_then(|e| match e.kind {
                K_STR => Some(KeyType::String),
                K_LIST => Some(KeyType::List),
                K_HASH => Some(KeyType::Hash),
                K_SET => Some(KeyType::Set),
                K_ZSET => Some(KeyType::ZSet),
                _ => None,
            }))
        })
        .ok()
        .flatten()
    }

    fn expires_count(&self, _now_ms: u64) -> u64 {
        self.read(|_, r| Ok(r.expires.len() as u64)).unwrap_or(0)
    }

    fn expire_sweep(&self, now_ms: u64, budget: usize) -> u64 {
        // a read first: an idle server's sweeps (ten a second) then write nothing
        let due = self.read(|tx, r| Ok(first_due(tx, r, now_ms)?.is_some()));
        if !due.unwrap_or(false) {
            return 0;
        }
        self.write(|tx, r| {
            let mut n = 0;
            while n < budget as u64 {
                let Some(key) = first_due(tx, r, now_ms)? else {
                    break;
                };
                delete(tx, r, &key)?;
                n += 1;
            }
            Ok(n)
        })
        .unwrap_or(0)
    }

    fn info(&self) -> Vec<(String, String)> {
        let g = self.lock();
        let mut v = vec![
            ("backend".into(), "pmem".into()),
            ("pool_path".into(), self.path.display().to_string()),
        ];
        if let Some(i) = g.as_ref() {
            let s = i.pool.stats();
            v.push(("used_memory".into(), s.in_use.to_string()));
            v.push(("pool_size".into(), i.pool.size().to_string()));
        }
        v
    }

    fn shutdown(&self) {
        self.close();
    }
}

/// A cheap random number for SPOP (xorshift on a time-seeded thread-local state).
fn pmem_examples_rand() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static S: Cell<u64> = Cell::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1,
        );
    }
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}
