//! [`PHashMap`]: a persistent chained hash map with incremental rehashing.

use super::{alloc_elems, elems, node, random_seed, PFree, PKey};
use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};

/// Buckets moved (at most) by each mutating operation while a resize is in progress.
const MOVE_PER_OP: usize = 2;
/// Empty buckets skipped (at most) by each mutating operation while resizing.
const VISIT_PER_OP: usize = 16;
/// Buckets of the first table.
const FIRST_BUCKETS: usize = 8;

/// One entry: `next (8) | hash (8) | key | value` (repr(C)), a block of its own.
#[repr(C)]
struct Node<K, V> {
    next: PPtr<Node<K, V>>,
    hash: u64,
    key: K,
    value: V,
}
// SAFETY: repr(C) of PSafe fields; no Drop, no handles.
unsafe impl<K: PSafe, V: PSafe> PSafe for Node<K, V> {}

type Link<K, V> = PPtr<Node<K, V>>;
/// A checked table: its bucket array and bucket count.
type Table<K, V> = Option<(*mut Link<K, V>, usize)>;
/// A node being moved by a resize step: pointer, address, target bucket.
type Moving<K, V> = (Link<K, V>, *mut Node<K, V>, usize);

/// A hash map in a pool (model: `HashMap<K, V>`), keyed by a [`PKey`] so that byte-string
/// keys ([`PBytes`](super::PBytes), looked up by `&[u8]`) are first-class.
///
/// Layout: a 64-byte header (`len`, `seed`, table 0 and its bucket count, table 1 and its
/// bucket count, the rehash position, a reserved word); each table is an array of bucket
/// words (a power of two of them), each bucket a singly linked chain of nodes (one block per
/// entry: `next | hash | key | value`). The hash of each entry is stored, so resizing never
/// reads keys.
///
/// Resizing is incremental (so no transaction's undo log grows with the map): when an insert
/// finds as many entries as buckets, a table twice as large is allocated (zeroed, new: no undo
/// entry) and from then on every insert and remove first moves up to 2 non-empty buckets of the
/// old table to the new one (relinking nodes; the words it changes are saved in one
/// [`Tx::snapshot_many`]), skipping at most 16 empty ones; lookups search both tables. When the
/// old table is empty it is freed. The map never shrinks (but `clear` frees the tables).
///
/// The hash ([`hash_bytes`](super::hash_bytes), stable) is keyed by a random seed stored in
/// the header when the first table is allocated.
///
/// Costs of an insert of a new key: the node allocation, one saved bucket word (one fence),
/// plus one `snapshot_many` while a resize is running; replacing a value saves the value.
///
/// # Examples
/// ```
/// use pmem_alloc::collections::{PBytes, PHashMap};
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<PHashMap<PBytes, u64>>()?;
/// pool.transaction(|tx| {
///     let m = tx.get_mut(root)?;
///     for i in 0..100u64 {
///         m.insert(tx, format!("key{i}").as_bytes(), i)?;
///     }
///     assert_eq!(m.insert(tx, b"key7", 70)?, Some(7));
///     *m.get_mut(tx, b"key8")?.unwrap() += 1;
///     assert_eq!(m.remove(tx, b"key9")?, Some(9));
///     Ok::<_, TxError>(())
/// })?;
/// pool.transaction(|tx| {
///     let m = tx.get(root)?;
///     assert_eq!(m.len(), 99);
///     assert_eq!(m.get(tx, b"key7")?, Some(&70));
///     assert_eq!(m.get(tx, b"key8")?, Some(&9));
///     assert_eq!(m.get(tx, b"key9")?, None);
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct PHashMap<K: PSafe, V: PSafe> {
    len: u64,
    seed: u64,
    t0: PPtr<Link<K, V>>,
    n0: u64,
    t1: PPtr<Link<K, V>>,
    n1: u64,
    rehash: u64,
    reserved: u64,
}

// SAFETY: repr(C); integers and PPtrs (all checked before use); no Drop, no handles.
unsafe impl<K: PSafe, V: PSafe> PSafe for PHashMap<K, V> {}
const _: () = assert!(std::mem::size_of::<PHashMap<u64, u64>>() == 64);

impl<K: PSafe, V: PSafe> std::fmt::Debug for PHashMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PHashMap")
            .field("len", &self.len)
            .field("buckets", &(self.n0, self.n1))
            .field("rehash", &self.rehash)
            .finish_non_exhaustive()
    }
}

map_default_and_free!(PHashMap);

/// A found entry: the link word naming it (bucket or predecessor's `next`), and the node.
struct Found<K, V> {
    link_at: PPtr<Link<K, V>>,
    link: *mut Link<K, V>,
    at: Link<K, V>,
    node: *mut Node<K, V>,
}

impl<K: PSafe, V: PSafe> PHashMap<K, V> {
    /// An empty map (no allocation; the same as a zeroed header).
    ///
    /// ```
    /// use pmem_alloc::collections::{PBytes, PHashMap};
    /// assert!(PHashMap::<PBytes, u64>::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        PHashMap {
            len: 0,
            seed: 0,
            t0: PPtr::null(),
            n0: 0,
            t1: PPtr::null(),
            n1: 0,
            rehash: 0,
            reserved: 0,
        }
    }

    /// Number of entries.
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PHashMap::<u64, u64>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the map is empty.
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PHashMap::<u64, u64>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total buckets of both tables (the second is non-zero while a resize is in progress).
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PHashMap::<u64, u64>::new().buckets(), 0);
    /// ```
    pub fn buckets(&self) -> usize {
        (self.n0 + self.n1) as usize
    }

    /// Whether an incremental resize is in progress.
    ///
    /// ```
    /// assert!(!pmem_alloc::collections::PHashMap::<u64, u64>::new().is_resizing());
    /// ```
    pub fn is_resizing(&self) -> bool {
        !self.t1.is_null()
    }

    /// A checked table: its bucket array and bucket count (None if absent).
    fn table<P: Persist + 'static>(
        tx: &Tx<'_, P>,
        t: PPtr<Link<K, V>>,
        n: u64,
    ) -> Result<Table<K, V>, TxError> {
        if t.is_null() != (n == 0) || (n != 0 && !n.is_power_of_two()) {
            return Err(TxError::Corrupt);
        }
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((elems(tx, t, n as usize)?, n as usize)))
    }

    fn tables<P: Persist + 'static>(&self, tx: &Tx<'_, P>) -> Result<[Table<K, V>; 2], TxError> {
        let a = Self::table(tx, self.t0, self.n0)?;
        let b = Self::table(tx, self.t1, self.n1)?;
        if a.is_none() && b.is_some() || self.rehash > self.n0 {
            return Err(TxError::Corrupt);
        }
        Ok([a, b])
    }
}

impl<K: PKey, V: PSafe> PHashMap<K, V> {
    fn find<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<Found<K, V>>, TxError> {
        let h = K::hash_lookup(self.seed, key);
        let ts = self.tables(tx)?;
        for (ti, t) in ts.iter().enumerate() {
            let Some((arr, n)) = *t else { continue };
            let b = (h as usize) & (n - 1);
            let base = if ti == 0 { self.t0 } else { self.t1 };
            let mut link_at = base.byte_add((b * 8) as u64);
            // SAFETY: bucket `b < n` of the checked table.
            let mut link = unsafe { arr.add(b) };
            let mut steps = 0u64;
            loop {
                // SAFETY: `link` is a bucket word or a checked node's `next` field.
                let at = unsafe { *link };
                if at.is_null() {
                    break;
                }
                steps += 1;
                if steps > self.len {
                    return Err(TxError::Corrupt);
                }
                let nd = node(tx, at)?;
                // SAFETY: a checked node: in the pool, aligned; PSafe fields. Shared borrow
                // of the key for the comparison only.
                let (nh, hit) = unsafe { ((*nd).hash, &(*nd).key) };
                if nh == h && hit.eq_lookup(tx, key)? {
                    return Ok(Some(Found {
                        link_at,
                        link,
                        at,
                        node: nd,
                    }));
                }
                link_at = at.cast();
                // SAFETY: the node's `next` field (offset 0).
                link = unsafe { std::ptr::addr_of_mut!((*nd).next) };
            }
        }
        Ok(None)
    }

    /// The value for `key`, or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PHashMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &1, 10)?;
    ///     assert_eq!(m.get(tx, &1)?, Some(&10));
    ///     assert_eq!(m.get(tx, &2)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<&'a V>, TxError> {
        // SAFETY: a checked node owned by this map, whose header is borrowed shared for 'a.
        Ok(self.find(tx, key)?.map(|f| unsafe { &(*f.node).value }))
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// # use pmem_alloc::collections::PHashMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &1, ())?;
    ///     assert!(m.contains_key(tx, &1)?);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn contains_key<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<bool, TxError> {
        Ok(self.find(tx, key)?.is_some())
    }

    /// The value for `key` for update in place (saved in the undo log first), or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, PHashMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<PBytes, PBytes>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     let v = PBytes::new(tx, b"a")?;
    ///     m.insert(tx, b"k", v)?;
    ///     m.get_mut(tx, b"k")?.unwrap().append(tx, b"bc")?; // APPEND k bc
    ///     assert_eq!(m.get(tx, b"k")?.unwrap().as_bytes(tx)?, b"abc");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut<'a, P: Persist + 'static>(
        &'a mut self,
        tx: &'a Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<&'a mut V>, TxError> {
        let Some(f) = self.find(tx, key)? else {
            return Ok(None);
        };
        let off = std::mem::offset_of!(Node<K, V>, value) as u64;
        tx.snapshot(f.at.cast::<u8>().byte_add(off), std::mem::size_of::<V>())?;
        // SAFETY: a checked node owned by this map; its value was saved above; the header is
        // borrowed mutably for 'a, so no other reference into the map exists.
        Ok(Some(unsafe { &mut (*f.node).value }))
    }

    /// Moves up to [`MOVE_PER_OP`] buckets of a running resize; ends the resize when the old
    /// table is empty.
    fn rehash_step<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        let [Some((a0, n0)), Some((a1, n1))] = self.tables(tx)? else {
            return Ok(());
        };
        let mut moved = 0;
        let mut visited = 0;
        let mut nodes: Vec<Moving<K, V>> = Vec::new();
        let mut ranges: Vec<(PPtr<u8>, usize)> = Vec::new();
        while moved < MOVE_PER_OP && visited < VISIT_PER_OP && (self.rehash as usize) < n0 {
            let i = self.rehash as usize;
            // SAFETY: bucket `i < n0` of the checked table.
            let mut cur = unsafe { *a0.add(i) };
            if !cur.is_null() {
                nodes.clear();
                ranges.clear();
                ranges.push((self.t0.cast::<u8>().byte_add((i * 8) as u64), 8));
                while !cur.is_null() {
                    if nodes.len() as u64 >= self.len {
                        return Err(TxError::Corrupt);
                    }
                    let nd = node(tx, cur)?;
                    // SAFETY: a checked node.
                    let (h, next) = unsafe { ((*nd).hash, (*nd).next) };
                    let b = (h as usize) & (n1 - 1);
                    ranges.push((cur.cast(), 8));
                    ranges.push((self.t1.cast::<u8>().byte_add((b * 8) as u64), 8));
                    nodes.push((cur, nd, b));
                    cur = next;
                }
                tx.snapshot_many(&ranges)?;
                for &(at, nd, b) in &nodes {
                    // SAFETY: the node's `next`, the target bucket and the source bucket were
                    // saved above; buckets are in the checked tables.
                    unsafe {
                        (*nd).next = *a1.add(b);
                        *a1.add(b) = at;
                    }
                }
                // SAFETY: as above.
                unsafe { *a0.add(i) = PPtr::null() };
                moved += 1;
            }
            visited += 1;
            self.rehash += 1;
        }
        if self.rehash as usize == n0 {
            let old = std::mem::replace(&mut self.t0, self.t1);
            self.n0 = self.n1;
            self.t1 = PPtr::null();
            self.n1 = 0;
            self.rehash = 0;
            // SAFETY: the old bucket array of this map (now empty), unlinked above in the
            // saved header; freed once, at commit.
            unsafe { tx.free(old)? };
        }
        Ok(())
    }

    /// Inserts `value` under `key` (the stored key is created with [`PKey::store`] only if the
    /// key is new). Returns the previous value, which the caller now owns, or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, PHashMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<PBytes, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     assert_eq!(m.insert(tx, b"a", 1)?, None);
    ///     assert_eq!(m.insert(tx, b"a", 2)?, Some(1));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
        value: V,
    ) -> Result<Option<V>, TxError> {
        self.rehash_step(tx)?;
        if let Some(f) = self.find(tx, key)? {
            let off = std::mem::offset_of!(Node<K, V>, value) as u64;
            tx.snapshot(f.at.cast::<u8>().byte_add(off), std::mem::size_of::<V>())?;
            // SAFETY: a checked node of this map; its value was saved above.
            return Ok(Some(unsafe {
                std::ptr::replace(std::ptr::addr_of_mut!((*f.node).value), value)
            }));
        }
        if self.t0.is_null() {
            if !self.t1.is_null() || self.len != 0 {
                return Err(TxError::Corrupt);
            }
            if self.seed == 0 {
                self.seed = random_seed();
            }
            self.t0 = alloc_elems::<Link<K, V>, P>(tx, FIRST_BUCKETS)?;
            self.n0 = FIRST_BUCKETS as u64;
        } else if self.t1.is_null() && self.len >= self.n0 {
            let n1 = (self.n0 as usize)
                .checked_mul(2)
                .ok_or(TxError::OutOfSpace)?;
            self.t1 = alloc_elems::<Link<K, V>, P>(tx, n1)?;
            self.n1 = n1 as u64;
            self.rehash = 0;
        }
        let (t, n) = if self.t1.is_null() {
            (self.t0, self.n0)
        } else {
            (self.t1, self.n1)
        };
        let arr = Self::table(tx, t, n)?.ok_or(TxError::Corrupt)?.0;
        let h = K::hash_lookup(self.seed, key);
        let b = (h as usize) & (n as usize - 1);
        let stored = K::store(tx, key)?;
        // SAFETY: bucket `b < n` of the checked table.
        let head = unsafe { *arr.add(b) };
        let nd = tx.alloc(Node {
            next: head,
            hash: h,
            key: stored,
            value,
        })?;
        tx.snapshot(t.byte_add((b * 8) as u64), 8)?;
        // SAFETY: the bucket word, saved above.
        unsafe { *arr.add(b) = nd };
        self.len = self.len.checked_add(1).ok_or(TxError::Corrupt)?;
        Ok(None)
    }

    /// Removes `key`, returning its value (the caller owns it; the stored key is freed), or
    /// `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, PHashMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<PBytes, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, b"a", 1)?;
    ///     assert_eq!(m.remove(tx, b"a")?, Some(1));
    ///     assert_eq!(m.remove(tx, b"a")?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<V>, TxError> {
        self.rehash_step(tx)?;
        let Some(f) = self.find(tx, key)? else {
            return Ok(None);
        };
        tx.snapshot(f.link_at, 8)?;
        // SAFETY: the link word (saved above) and the checked node; the node is unlinked
        // here, so its key and value are read out once.
        let (k, v) = unsafe {
            *f.link = (*f.node).next;
            (
                std::ptr::addr_of!((*f.node).key).read(),
                std::ptr::addr_of!((*f.node).value).read(),
            )
        };
        k.free_in(tx)?;
        // SAFETY: the node block of this map, unlinked above; freed once, at commit.
        unsafe { tx.free(f.at)? };
        self.len -= 1;
        Ok(Some(v))
    }

    /// An iterator over the entries (in no particular order). Items are `Err` (and the
    /// iteration ends) if a node is corrupt.
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, PHashMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<PBytes, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, b"a", 1)?;
    ///     m.insert(tx, b"b", 2)?;
    ///     let mut sum = 0;
    ///     for e in m.iter(tx)? {
    ///         let (k, v) = e?;
    ///         assert_eq!(k.as_bytes(tx)?.len(), 1);
    ///         sum += v;
    ///     }
    ///     assert_eq!(sum, 3);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'a, P>,
    ) -> Result<PHashMapIter<'a, K, V, P>, TxError> {
        let tables = self.tables(tx)?;
        Ok(PHashMapIter {
            tx,
            tables,
            table: 0,
            bucket: 0,
            cur: PPtr::null(),
            left: self.len,
            done: false,
        })
    }
}

impl<K: PKey, V: PFree> PHashMap<K, V> {
    /// Removes every entry, freeing keys, values, nodes and tables (the seed is kept).
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, PHashMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("h.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PHashMap<PBytes, PBytes>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     let v = PBytes::new(tx, b"v")?;
    ///     m.insert(tx, b"k", v)?;
    ///     m.clear(tx)?;
    ///     assert!(m.is_empty());
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        let tables = self.tables(tx)?;
        let mut seen = 0u64;
        for (arr, n) in tables.into_iter().flatten() {
            for b in 0..n {
                // SAFETY: bucket `b < n` of a checked table.
                let mut cur = unsafe { *arr.add(b) };
                while !cur.is_null() {
                    seen += 1;
                    if seen > self.len {
                        return Err(TxError::Corrupt);
                    }
                    let nd = node(tx, cur)?;
                    // SAFETY: a checked node of this map; the whole map is dropped below, so
                    // each key and value is read out once.
                    let (next, k, v) = unsafe {
                        (
                            (*nd).next,
                            std::ptr::addr_of!((*nd).key).read(),
                            std::ptr::addr_of!((*nd).value).read(),
                        )
                    };
                    k.free_in(tx)?;
                    v.free_in(tx)?;
                    // SAFETY: a node block of this map, unreachable once the header is reset
                    // below; freed once, at commit.
                    unsafe { tx.free(cur)? };
                    cur = next;
                }
            }
        }
        let (t0, t1) = (self.t0, self.t1);
        let seed = self.seed;
        *self = PHashMap::new();
        self.seed = seed;
        // SAFETY: the bucket arrays of this map, unlinked above; freed once, at commit.
        unsafe {
            tx.free(t0)?;
            tx.free(t1)?;
        }
        Ok(())
    }
}

/// An iterator over a [`PHashMap`]'s entries.
pub struct PHashMapIter<'a, K: PSafe, V: PSafe, P: Persist + 'static> {
    tx: &'a Tx<'a, P>,
    tables: [Table<K, V>; 2],
    table: usize,
    bucket: usize,
    cur: Link<K, V>,
    left: u64,
    done: bool,
}

impl<K: PSafe, V: PSafe, P: Persist + 'static> std::fmt::Debug for PHashMapIter<'_, K, V, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PHashMapIter")
            .field("table", &self.table)
            .field("bucket", &self.bucket)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<'a, K: PSafe, V: PSafe, P: Persist + 'static> Iterator for PHashMapIter<'a, K, V, P> {
    type Item = Result<(&'a K, &'a V), TxError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.cur.is_null() {
            if self.table >= 2 {
                self.done = true;
                return None;
            }
            match self.tables[self.table] {
                Some((arr, n)) if self.bucket < n => {
                    // SAFETY: bucket `bucket < n` of a checked table.
                    self.cur = unsafe { *arr.add(self.bucket) };
                    self.bucket += 1;
                }
                _ => {
                    self.table += 1;
                    self.bucket = 0;
                }
            }
        }
        if self.left == 0 {
            self.done = true;
            return Some(Err(TxError::Corrupt));
        }
        self.left -= 1;
        match node(self.tx, self.cur) {
            Ok(nd) => {
                // SAFETY: a checked node of the map, whose header is borrowed shared for 'a.
                let (next, k, v) = unsafe { ((*nd).next, &(*nd).key, &(*nd).value) };
                self.cur = next;
                Some(Ok((k, v)))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
