//! [`POrdMap`]: a persistent ordered map (a treap with subtree sizes).

use super::{mix64, node, random_seed, PFree, PKey};
use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};
use std::cmp::Ordering;
use std::ops::Bound;

/// One entry: `left (8) | right (8) | size (8) | prio (8) | key | value` (repr(C)), a block
/// of its own. `size` counts the entries of the subtree rooted here.
#[repr(C)]
struct ONode<K, V> {
    left: PPtr<ONode<K, V>>,
    right: PPtr<ONode<K, V>>,
    size: u64,
    prio: u64,
    key: K,
    value: V,
}
// SAFETY: repr(C) of PSafe fields; no Drop, no handles.
unsafe impl<K: PSafe, V: PSafe> PSafe for ONode<K, V> {}

/// The bytes of a node that structural changes modify (links, size, priority).
const LINKS: usize = 32;

type Link<K, V> = PPtr<ONode<K, V>>;
/// A node of a search path: pointer, address, direction taken there.
type Step<K, V> = (Link<K, V>, *mut ONode<K, V>, Ordering);
/// A found node: its pointer and address.
type At<K, V> = (Link<K, V>, *mut ONode<K, V>);

/// An ordered map in a pool (model: `BTreeMap<K, V>`), ordered by [`PKey::cmp_lookup`]. It
/// is a treap: a binary search tree by key that is a max-heap by a pseudo-random priority per
/// node (drawn from the header's seed and counter), so its depth is O(log n) in expectation
/// whatever the insertion order. Every node stores its subtree's size, so access by rank is
/// O(log n): `ZRANGE key 0 9` is [`POrdMap::range_by_rank`], O(log n + k).
///
/// Layout: a 32-byte header (`root`, `len`, `seed`, `counter`); one block per entry
/// (`left | right | size | prio | key | value`).
///
/// An insert or remove saves the links of every node it may restructure (the search path,
/// and for a remove the two spines below the removed node, O(log n) nodes of 32 bytes) with
/// one [`Tx::snapshot_many`]: one fence, whatever the depth.
///
/// For a Redis sorted set, key a `POrdMap<PBytes, ()>` by
/// [`encode_score`](super::encode_score)`(score) ++ member`, which orders by score then
/// member, and keep member -> score in a [`PHashMap`](super::PHashMap).
///
/// # Examples
/// ```
/// use pmem_alloc::collections::{encode_score, PBytes, POrdMap};
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<POrdMap<PBytes, ()>>()?;
/// let key = |score: f64, member: &[u8]| [&encode_score(score)[..], member].concat();
/// pool.transaction(|tx| {
///     let z = tx.get_mut(root)?;
///     z.insert(tx, &key(2.0, b"b"), ())?;
///     z.insert(tx, &key(1.0, b"a"), ())?;
///     z.insert(tx, &key(-5.0, b"c"), ())?;
///     // ZRANGE z 0 1
///     let first: Vec<Vec<u8>> = z
///         .range_by_rank(tx, 0..2)?
///         .map(|e| e.and_then(|(k, _)| Ok(k.as_bytes(tx)?[8..].to_vec())))
///         .collect::<Result<_, _>>()?;
///     assert_eq!(first, vec![b"c".to_vec(), b"a".to_vec()]);
///     assert_eq!(z.rank(tx, &key(2.0, b"b"))?, Some(2));
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct POrdMap<K: PSafe, V: PSafe> {
    root: Link<K, V>,
    len: u64,
    seed: u64,
    counter: u64,
}

// SAFETY: repr(C); a PPtr and integers (checked before use); no Drop, no handles.
unsafe impl<K: PSafe, V: PSafe> PSafe for POrdMap<K, V> {}
const _: () = assert!(std::mem::size_of::<POrdMap<u64, u64>>() == 32);

impl<K: PSafe, V: PSafe> std::fmt::Debug for POrdMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("POrdMap")
            .field("root", &self.root)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

map_default_and_free!(POrdMap);

/// Size of the subtree at `p` (0 for null).
fn size<K, V, P: Persist + 'static>(tx: &Tx<'_, P>, p: Link<K, V>) -> Result<u64, TxError> {
    if p.is_null() {
        return Ok(0);
    }
    // SAFETY: a checked node; an integer field.
    Ok(unsafe { (*node(tx, p)?).size })
}

impl<K: PSafe, V: PSafe> POrdMap<K, V> {
    /// An empty map (no allocation; the same as a zeroed header).
    ///
    /// ```
    /// assert!(pmem_alloc::collections::POrdMap::<u64, u64>::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        POrdMap {
            root: PPtr::null(),
            len: 0,
            seed: 0,
            counter: 0,
        }
    }

    /// Number of entries.
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::POrdMap::<u64, u64>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the map is empty.
    ///
    /// ```
    /// assert!(pmem_alloc::collections::POrdMap::<u64, u64>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Follows `dir` from the root (Less: right, Greater: left, Equal: stop) and returns the
    /// path: (node, its address, the direction taken there). The last element is the node
    /// where `dir` said Equal, if any (returned as `true`).
    fn path<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        mut dir: impl FnMut(*mut ONode<K, V>) -> Result<Ordering, TxError>,
    ) -> Result<(Vec<Step<K, V>>, bool), TxError> {
        let mut out = Vec::new();
        let mut cur = self.root;
        while !cur.is_null() {
            if out.len() as u64 >= self.len {
                return Err(TxError::Corrupt);
            }
            let nd = node(tx, cur)?;
            let d = dir(nd)?;
            out.push((cur, nd, d));
            // SAFETY: a checked node; link fields.
            let (l, r) = unsafe { ((*nd).left, (*nd).right) };
            cur = match d {
                Ordering::Equal => return Ok((out, true)),
                Ordering::Less => r,
                Ordering::Greater => l,
            };
        }
        Ok((out, false))
    }

    /// The node at `cur`, the `steps`-th (counted here) of a walk down from the root: a walk
    /// longer than the map has entries meets a cycle ([`TxError::Corrupt`]).
    fn step<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        cur: Link<K, V>,
        steps: &mut u64,
    ) -> Result<*mut ONode<K, V>, TxError> {
        *steps += 1;
        if *steps > self.len {
            return Err(TxError::Corrupt);
        }
        node(tx, cur)
    }

    /// The node at which `dir` says Equal.
    fn find<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        mut dir: impl FnMut(*mut ONode<K, V>) -> Result<Ordering, TxError>,
    ) -> Result<Option<At<K, V>>, TxError> {
        let mut cur = self.root;
        let mut steps = 0;
        while !cur.is_null() {
            let nd = self.step(tx, cur, &mut steps)?;
            let d = dir(nd)?;
            // SAFETY: a checked node; link fields.
            let (l, r) = unsafe { ((*nd).left, (*nd).right) };
            cur = match d {
                Ordering::Equal => return Ok(Some((cur, nd))),
                Ordering::Less => r,
                Ordering::Greater => l,
            };
        }
        Ok(None)
    }

    /// Direction towards rank `i` (updated as the descent goes right).
    fn by_rank<'x, P: Persist + 'static>(
        tx: &'x Tx<'x, P>,
        mut i: u64,
    ) -> impl FnMut(*mut ONode<K, V>) -> Result<Ordering, TxError> + 'x {
        move |nd| {
            // SAFETY: a checked node (the callers pass checked nodes only).
            let ls = size(tx, unsafe { (*nd).left })?;
            Ok(match i.cmp(&ls) {
                Ordering::Less => Ordering::Greater,
                Ordering::Equal => Ordering::Equal,
                Ordering::Greater => {
                    i -= ls + 1;
                    Ordering::Less
                }
            })
        }
    }

    /// The entry of rank `i` (0 = smallest), or `None`: O(log n).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     for k in [30, 10, 20] {
    ///         m.insert(tx, &k, k * 2)?;
    ///     }
    ///     assert_eq!(m.get_by_rank(tx, 1)?, Some((&20, &40)));
    ///     assert_eq!(m.get_by_rank(tx, 3)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_by_rank<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        i: usize,
    ) -> Result<Option<(&'a K, &'a V)>, TxError> {
        if i as u64 >= self.len {
            return Ok(None);
        }
        let f = self.find(tx, Self::by_rank(tx, i as u64))?;
        // SAFETY: a checked node owned by this map, borrowed shared for 'a.
        Ok(f.map(|(_, nd)| unsafe { (&(*nd).key, &(*nd).value) }))
    }

    /// The smallest entry, or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &5, ())?;
    ///     m.insert(tx, &3, ())?;
    ///     assert_eq!(m.first(tx)?.map(|(k, _)| *k), Some(3));
    ///     assert_eq!(m.last(tx)?.map(|(k, _)| *k), Some(5));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn first<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<Option<(&'a K, &'a V)>, TxError> {
        self.get_by_rank(tx, 0)
    }

    /// The largest entry, or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     assert!(tx.get(root)?.last(tx)?.is_none());
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn last<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<Option<(&'a K, &'a V)>, TxError> {
        match self.len() {
            0 => Ok(None),
            n => self.get_by_rank(tx, n - 1),
        }
    }

    /// Pushes `p` and its left spine onto an iterator stack.
    fn push_left<P: Persist + 'static>(
        tx: &Tx<'_, P>,
        mut p: Link<K, V>,
        stack: &mut Vec<Link<K, V>>,
        limit: u64,
    ) -> Result<(), TxError> {
        while !p.is_null() {
            if stack.len() as u64 >= limit {
                return Err(TxError::Corrupt);
            }
            stack.push(p);
            // SAFETY: a checked node; a link field.
            p = unsafe { (*node(tx, p)?).left };
        }
        Ok(())
    }

    fn iter_from<'a, 'l, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'a, P>,
        stack: Vec<Link<K, V>>,
        left: u64,
        hi: Bound<&'l K::Lookup>,
    ) -> POrdMapIter<'a, 'l, K, V, P>
    where
        K: PKey,
    {
        POrdMapIter {
            tx,
            stack,
            left,
            limit: self.len,
            hi,
            done: false,
        }
    }
}

impl<K: PKey, V: PSafe> POrdMap<K, V> {
    /// The value for `key`, or `None`: O(log n).
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, POrdMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<PBytes, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, b"k", 1)?;
    ///     assert_eq!(m.get(tx, b"k")?, Some(&1));
    ///     assert_eq!(m.get(tx, b"j")?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<&'a V>, TxError> {
        // SAFETY: checked nodes owned by this map, borrowed shared for 'a.
        let f = self.find(tx, |nd| unsafe { (*nd).key.cmp_lookup(tx, key) })?;
        // SAFETY: as above.
        Ok(f.map(|(_, nd)| unsafe { &(*nd).value }))
    }

    /// The value for `key` for update (saved first), or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &1, 1)?;
    ///     *m.get_mut(tx, &1)?.unwrap() = 5;
    ///     assert_eq!(m.get(tx, &1)?, Some(&5));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut<'a, P: Persist + 'static>(
        &'a mut self,
        tx: &'a Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<&'a mut V>, TxError> {
        // SAFETY: checked nodes owned by this map.
        let f = self.find(tx, |nd| unsafe { (*nd).key.cmp_lookup(tx, key) })?;
        let Some((at, nd)) = f else { return Ok(None) };
        let off = std::mem::offset_of!(ONode<K, V>, value) as u64;
        tx.snapshot(at.cast::<u8>().byte_add(off), std::mem::size_of::<V>())?;
        // SAFETY: the value of a checked node of this map, saved above; the header is
        // borrowed mutably for 'a.
        Ok(Some(unsafe { &mut (*nd).value }))
    }

    /// The rank of `key` (the number of smaller keys) if present: O(log n) (ZRANK).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     for k in [5, 1, 3] {
    ///         m.insert(tx, &k, ())?;
    ///     }
    ///     assert_eq!(m.rank(tx, &5)?, Some(2));
    ///     assert_eq!(m.rank(tx, &4)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rank<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<usize>, TxError> {
        let mut r = 0u64;
        let f = self.find(tx, |nd| {
            // SAFETY: a checked node of this map.
            let (c, l) = unsafe { ((*nd).key.cmp_lookup(tx, key)?, (*nd).left) };
            if c != Ordering::Greater {
                r = r.wrapping_add(size(tx, l)?);
            }
            if c == Ordering::Less {
                r = r.wrapping_add(1);
            }
            Ok(c)
        })?;
        Ok(f.map(|_| r as usize))
    }

    /// The priority of the next new node.
    fn next_prio(&mut self) -> u64 {
        if self.seed == 0 {
            self.seed = random_seed();
        }
        self.counter = self.counter.wrapping_add(1);
        mix64(self.seed ^ self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Inserts `value` under `key` (the stored key is created only if the key is new).
    /// Returns the previous value, which the caller now owns, or `None`. O(log n).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<i64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     assert_eq!(m.insert(tx, &-1, 1)?, None);
    ///     assert_eq!(m.insert(tx, &-1, 2)?, Some(1));
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
        // SAFETY: checked nodes of this map.
        let (path, found) = self.path(tx, |nd| unsafe { (*nd).key.cmp_lookup(tx, key) })?;
        if found {
            let &(at, nd, _) = path.last().expect("found");
            let off = std::mem::offset_of!(ONode<K, V>, value) as u64;
            tx.snapshot(at.cast::<u8>().byte_add(off), std::mem::size_of::<V>())?;
            // SAFETY: the value of a checked node, saved above.
            return Ok(Some(unsafe {
                std::ptr::replace(std::ptr::addr_of_mut!((*nd).value), value)
            }));
        }
        let ranges: Vec<(PPtr<u8>, usize)> =
            path.iter().map(|&(at, _, _)| (at.cast(), LINKS)).collect();
        tx.snapshot_many(&ranges)?;
        let prio = self.next_prio();
        let stored = K::store(tx, key)?;
        let new = tx.alloc(ONode {
            left: PPtr::null(),
            right: PPtr::null(),
            size: 1,
            prio,
            key: stored,
            value,
        })?;
        let nn = node(tx, new)?;
        // SAFETY: (whole block) every node of `path` is checked and its links were saved
        // above; `nn` is the fresh node; the header is borrowed mutably. Raw pointers are used
        // one access at a time.
        unsafe {
            // descend while the path's priorities dominate; those subtrees gain one entry
            let mut i = 0;
            while i < path.len() && (*path[i].1).prio >= prio {
                let nd = path[i].1;
                (*nd).size = (*nd).size.wrapping_add(1);
                i += 1;
            }
            // split the rest of the path (the search path of `key` in that subtree)
            let mut l_root: Link<K, V> = PPtr::null();
            let mut r_root: Link<K, V> = PPtr::null();
            let mut lslot: *mut Link<K, V> = &mut l_root;
            let mut rslot: *mut Link<K, V> = &mut r_root;
            for &(at, nd, d) in &path[i..] {
                if d == Ordering::Less {
                    *lslot = at;
                    lslot = std::ptr::addr_of_mut!((*nd).right);
                } else {
                    *rslot = at;
                    rslot = std::ptr::addr_of_mut!((*nd).left);
                }
            }
            *lslot = PPtr::null();
            *rslot = PPtr::null();
            for &(_, nd, _) in path[i..].iter().rev() {
                (*nd).size = size(tx, (*nd).left)?
                    .wrapping_add(size(tx, (*nd).right)?)
                    .wrapping_add(1);
            }
            (*nn).left = l_root;
            (*nn).right = r_root;
            (*nn).size = size(tx, l_root)?
                .wrapping_add(size(tx, r_root)?)
                .wrapping_add(1);
            match i {
                0 => self.root = new,
                _ => {
                    let (_, parent, d) = path[i - 1];
                    if d == Ordering::Less {
                        (*parent).right = new;
                    } else {
                        (*parent).left = new;
                    }
                }
            }
        }
        self.len = self.len.checked_add(1).ok_or(TxError::Corrupt)?;
        Ok(None)
    }

    /// Unlinks the node where `dir` says Equal; returns its key and value (owned).
    fn remove_by<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        dir: impl FnMut(*mut ONode<K, V>) -> Result<Ordering, TxError>,
    ) -> Result<Option<(K, V)>, TxError> {
        let (path, found) = self.path(tx, dir)?;
        if !found {
            return Ok(None);
        }
        let &(x_at, x, _) = path.last().expect("found");
        let above = &path[..path.len() - 1];
        // the right spine of the left subtree and the left spine of the right one
        let mut ranges: Vec<(PPtr<u8>, usize)> =
            above.iter().map(|&(at, _, _)| (at.cast(), LINKS)).collect();
        // SAFETY: `x` is a checked node; link fields.
        let (xl, xr) = unsafe { ((*x).left, (*x).right) };
        for (start, right) in [(xl, true), (xr, false)] {
            let mut p = start;
            while !p.is_null() {
                if ranges.len() as u64 > 2 * self.len {
                    return Err(TxError::Corrupt);
                }
                ranges.push((p.cast(), LINKS));
                let nd = node(tx, p)?;
                // SAFETY: a checked node; link fields.
                p = unsafe {
                    if right {
                        (*nd).right
                    } else {
                        (*nd).left
                    }
                };
            }
        }
        tx.snapshot_many(&ranges)?;
        // SAFETY: (whole block) the nodes modified are those of `above` and of the two spines,
        // all checked and saved above; the header is borrowed mutably.
        unsafe {
            for &(_, nd, _) in above {
                (*nd).size = (*nd).size.wrapping_sub(1);
            }
            let mut res: Link<K, V> = PPtr::null();
            let mut slot: *mut Link<K, V> = &mut res;
            let mut stack = Vec::new();
            let (mut a, mut b) = (xl, xr);
            while !a.is_null() && !b.is_null() {
                let (na, nb) = (node(tx, a)?, node(tx, b)?);
                if (*na).prio > (*nb).prio {
                    *slot = a;
                    stack.push(na);
                    slot = std::ptr::addr_of_mut!((*na).right);
                    a = (*na).right;
                } else {
                    *slot = b;
                    stack.push(nb);
                    slot = std::ptr::addr_of_mut!((*nb).left);
                    b = (*nb).left;
                }
            }
            *slot = if a.is_null() { b } else { a };
            for &nd in stack.iter().rev() {
                (*nd).size = size(tx, (*nd).left)?
                    .wrapping_add(size(tx, (*nd).right)?)
                    .wrapping_add(1);
            }
            match above.last() {
                None => self.root = res,
                Some(&(_, parent, d)) => {
                    if d == Ordering::Less {
                        (*parent).right = res;
                    } else {
                        (*parent).left = res;
                    }
                }
            }
        }
        // SAFETY: `x` is unlinked above, so its key and value are read out once.
        let kv = unsafe {
            (
                std::ptr::addr_of!((*x).key).read(),
                std::ptr::addr_of!((*x).value).read(),
            )
        };
        // SAFETY: the node block of this map, unlinked above; freed once, at commit.
        unsafe { tx.free(x_at)? };
        self.len -= 1;
        Ok(Some(kv))
    }

    /// Removes `key`, returning its value (the caller owns it; the stored key is freed), or
    /// `None`. O(log n).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &1, 10)?;
    ///     assert_eq!(m.remove(tx, &1)?, Some(10));
    ///     assert_eq!(m.remove(tx, &1)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        key: &K::Lookup,
    ) -> Result<Option<V>, TxError> {
        // SAFETY: checked nodes of this map.
        let Some((k, v)) = self.remove_by(tx, |nd| unsafe { (*nd).key.cmp_lookup(tx, key) })?
        else {
            return Ok(None);
        };
        k.free_in(tx)?;
        Ok(Some(v))
    }

    /// Removes and returns the smallest entry (the caller owns key and value), or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, &2, 20)?;
    ///     m.insert(tx, &1, 10)?;
    ///     assert_eq!(m.pop_first(tx)?, Some((1, 10)));
    ///     assert_eq!(m.pop_last(tx)?, Some((2, 20)));
    ///     assert_eq!(m.pop_first(tx)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pop_first<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
    ) -> Result<Option<(K, V)>, TxError> {
        if self.len == 0 {
            return Ok(None);
        }
        self.remove_by(tx, Self::by_rank(tx, 0))
    }

    /// Removes and returns the largest entry, or `None` (see [`POrdMap::pop_first`]).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, u64>>()?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(tx.get_mut(root)?.pop_last(tx)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pop_last<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
    ) -> Result<Option<(K, V)>, TxError> {
        if self.len == 0 {
            return Ok(None);
        }
        let last = self.len - 1;
        self.remove_by(tx, Self::by_rank(tx, last))
    }

    /// Every entry in key order.
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     for k in [3, 1, 2] {
    ///         m.insert(tx, &k, ())?;
    ///     }
    ///     let keys: Vec<u64> = m.iter(tx)?.map(|e| e.map(|(k, _)| *k)).collect::<Result<_, _>>()?;
    ///     assert_eq!(keys, vec![1, 2, 3]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'a, P>,
    ) -> Result<POrdMapIter<'a, 'a, K, V, P>, TxError> {
        let mut stack = Vec::new();
        Self::push_left(tx, self.root, &mut stack, self.len)?;
        Ok(self.iter_from(tx, stack, self.len, Bound::Unbounded))
    }

    /// The entries of ranks `r` (clamped to the length), in order: O(log n + k) (ZRANGE).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     for k in 0..10 {
    ///         m.insert(tx, &k, ())?;
    ///     }
    ///     let keys: Vec<u64> =
    ///         m.range_by_rank(tx, 7..20)?.map(|e| e.map(|(k, _)| *k)).collect::<Result<_, _>>()?;
    ///     assert_eq!(keys, vec![7, 8, 9]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range_by_rank<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'a, P>,
        r: std::ops::Range<usize>,
    ) -> Result<POrdMapIter<'a, 'a, K, V, P>, TxError> {
        let end = (r.end as u64).min(self.len);
        let start = (r.start as u64).min(end);
        let mut stack = Vec::new();
        let mut i = start;
        let mut cur = self.root;
        while !cur.is_null() && start < end {
            if stack.len() as u64 >= self.len {
                return Err(TxError::Corrupt);
            }
            let nd = node(tx, cur)?;
            // SAFETY: a checked node; link fields.
            let (l, rt) = unsafe { ((*nd).left, (*nd).right) };
            let ls = size(tx, l)?;
            match i.cmp(&ls) {
                Ordering::Less => {
                    stack.push(cur);
                    cur = l;
                }
                Ordering::Equal => {
                    stack.push(cur);
                    break;
                }
                Ordering::Greater => {
                    i -= ls + 1;
                    cur = rt;
                }
            }
        }
        Ok(self.iter_from(tx, stack, end - start, Bound::Unbounded))
    }

    /// The entries with keys within `(lo, hi)` bounds, in order: O(log n + k) (ZRANGEBYSCORE,
    /// ZRANGEBYLEX).
    ///
    /// ```
    /// # use pmem_alloc::collections::POrdMap;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// use std::ops::Bound::{Excluded, Included};
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<u64, ()>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     for k in 0..10 {
    ///         m.insert(tx, &k, ())?;
    ///     }
    ///     let keys: Vec<u64> = m
    ///         .range(tx, Excluded(&3), Included(&5))?
    ///         .map(|e| e.map(|(k, _)| *k))
    ///         .collect::<Result<_, _>>()?;
    ///     assert_eq!(keys, vec![4, 5]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range<'a, 'l, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'a, P>,
        lo: Bound<&K::Lookup>,
        hi: Bound<&'l K::Lookup>,
    ) -> Result<POrdMapIter<'a, 'l, K, V, P>, TxError> {
        let mut stack = Vec::new();
        let mut cur = self.root;
        let mut steps = 0;
        while !cur.is_null() {
            let nd = self.step(tx, cur, &mut steps)?;
            // SAFETY: a checked node of this map.
            let (k, l, r) = unsafe { (&(*nd).key, (*nd).left, (*nd).right) };
            let include = match lo {
                Bound::Unbounded => true,
                Bound::Included(b) => k.cmp_lookup(tx, b)? != Ordering::Less,
                Bound::Excluded(b) => k.cmp_lookup(tx, b)? == Ordering::Greater,
            };
            if include {
                stack.push(cur);
                cur = l;
            } else {
                cur = r;
            }
        }
        Ok(self.iter_from(tx, stack, self.len, hi))
    }
}

impl<K: PKey, V: PFree> POrdMap<K, V> {
    /// Removes every entry, freeing keys, values and nodes (the seed is kept).
    ///
    /// ```
    /// # use pmem_alloc::collections::{PBytes, POrdMap};
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("o.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<POrdMap<PBytes, u64>>()?;
    /// pool.transaction(|tx| {
    ///     let m = tx.get_mut(root)?;
    ///     m.insert(tx, b"a", 1)?;
    ///     m.clear(tx)?;
    ///     assert!(m.is_empty());
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        let mut stack = vec![self.root];
        let mut seen = 0u64;
        while let Some(p) = stack.pop() {
            if p.is_null() {
                continue;
            }
            seen += 1;
            if seen > self.len {
                return Err(TxError::Corrupt);
            }
            let nd = node(tx, p)?;
            // SAFETY: a checked node of this map; the whole tree is dropped below, so each key
            // and value is read out once.
            let (l, r, k, v) = unsafe {
                (
                    (*nd).left,
                    (*nd).right,
                    std::ptr::addr_of!((*nd).key).read(),
                    std::ptr::addr_of!((*nd).value).read(),
                )
            };
            k.free_in(tx)?;
            v.free_in(tx)?;
            // SAFETY: a node block of this map, unreachable once the header is reset below;
            // freed once, at commit.
            unsafe { tx.free(p)? };
            stack.push(l);
            stack.push(r);
        }
        self.root = PPtr::null();
        self.len = 0;
        Ok(())
    }
}

/// An in-order iterator over a [`POrdMap`] (or a range of it). Items are `Err` (and the
/// iteration ends) if a node is corrupt.
pub struct POrdMapIter<'a, 'l, K: PKey, V: PSafe, P: Persist + 'static> {
    tx: &'a Tx<'a, P>,
    stack: Vec<Link<K, V>>,
    left: u64,
    limit: u64,
    hi: Bound<&'l K::Lookup>,
    done: bool,
}

impl<K: PKey, V: PSafe, P: Persist + 'static> std::fmt::Debug for POrdMapIter<'_, '_, K, V, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("POrdMapIter")
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl<'a, K: PKey, V: PSafe, P: Persist + 'static> POrdMapIter<'a, '_, K, V, P> {
    fn step(&mut self) -> Result<Option<(&'a K, &'a V)>, TxError> {
        if self.left == 0 {
            return Ok(None);
        }
        let Some(p) = self.stack.pop() else {
            return Ok(None);
        };
        let nd = node(self.tx, p)?;
        // SAFETY: a checked node of the map, whose header is borrowed shared for 'a.
        let (k, v, r) = unsafe { (&(*nd).key, &(*nd).value, (*nd).right) };
        let beyond = match self.hi {
            Bound::Unbounded => false,
            Bound::Included(b) => k.cmp_lookup(self.tx, b)? == Ordering::Greater,
            Bound::Excluded(b) => k.cmp_lookup(self.tx, b)? != Ordering::Less,
        };
        if beyond {
            return Ok(None);
        }
        POrdMap::<K, V>::push_left(self.tx, r, &mut self.stack, self.limit)?;
        self.left -= 1;
        Ok(Some((k, v)))
    }
}

impl<'a, K: PKey, V: PSafe, P: Persist + 'static> Iterator for POrdMapIter<'a, '_, K, V, P> {
    type Item = Result<(&'a K, &'a V), TxError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
