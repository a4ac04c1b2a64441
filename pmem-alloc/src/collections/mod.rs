//! Crash-consistent persistent collections: vectors, byte strings, deques, hash maps and
//! ordered maps that live in a [`Pool`](crate::pool::Pool) and change only inside
//! transactions.
//!
//! | type | what | std model |
//! |---|---|---|
//! | [`PVec<T>`] | growable array | `Vec<T>` |
//! | [`PBytes`], [`PString`] | byte string (one block: length, capacity, bytes) | `Vec<u8>`, `String` |
//! | [`PDeque<T>`] | ring buffer with O(1) ends and rank access | `VecDeque<T>` |
//! | [`PHashMap<K, V>`] | chained hash map, incremental rehashing | `HashMap<K, V>` |
//! | [`POrdMap<K, V>`] | ordered map (treap with subtree sizes: rank queries) | `BTreeMap<K, V>` |
//!
//! # Access model
//! A collection *is* its header: a small `#[repr(C)]`, [`PSafe`] struct stored anywhere in the
//! pool (a field of the root, an element of another collection, a block of its own). The
//! all-zero header is the empty collection, so a zeroed root already holds empty collections.
//! The application borrows the header through the transaction: [`Tx::get_mut`] to modify it
//! (which saves the header in the undo log, once), [`Tx::get`] to read it. Methods then take
//! the transaction as an argument:
//!
//! - every method that modifies takes `&mut self` and `&Tx`; it saves (or, for unused capacity
//!   and new blocks, merely registers for flushing) every range it writes before writing it;
//! - every read takes `&self` and `&Tx` (reads need a transaction too: a transaction that
//!   saves nothing costs no fence), and references it returns live no longer than both, so
//!   they cannot leave the transaction, and the borrow checker stops a modification while one
//!   is held.
//!
//! The transaction's borrow registry (see [`crate::tx`]) makes the header the unit of
//! isolation: a header borrowed mutably in one running transaction cannot be borrowed in
//! another, and everything a collection owns is reached only through its header.
//!
//! What is not protected is a header *forged* by writing raw integers (a [`PSafe`] header can
//! be reinterpreted as words, like any pool memory): headers made to share a buffer would hand
//! out aliasing references, and a corrupt buffer pointer that still passes the range checks
//! would be freed as if it were a block. Every stored length, capacity and pointer is
//! otherwise checked before use (inside the pool, outside the allocator's metadata, aligned,
//! consistent lengths, bounded chain walks), and a failed check returns
//! [`TxError::Corrupt`] instead of reading out of bounds.
//!
//! A header moved out of the pool (`std::mem::take` of a borrowed header, say) is a header
//! like any other: it owns the same blocks, so use it with the same pool and only until they
//! are freed.
//!
//! # Costs
//! Fences per operation, besides the one that saves the header (the caller's
//! [`Tx::get_mut`], once per transaction) and the commit's two:
//!
//! | operation | fences |
//! |---|---|
//! | `PVec::push`, `PDeque::push_*` within capacity, pointer-free element | 0 (the slot is flushed at commit) |
//! | the same with an element that may hold pointers ([`PFree::MAY_HOLD_PPTR`]) | 1 |
//! | `pop`, `truncate`, `clear` | 0; 1 if a vacated slot holds a pointer word |
//! | growth of a `PVec`, `PDeque` or `PBytes` | 0 (a new block; the old one is freed at commit) |
//! | `set`, `get_mut`, `insert`/`remove` of a `PVec` | 1 |
//! | `PBytes::append`, `set_range` | 1 |
//! | `PHashMap::insert` of a new key, `remove` | 1, plus 1 while a resize runs |
//! | `PHashMap::insert` over an existing key, `get_mut` | 1 |
//! | `POrdMap::insert`, `remove`, `pop_first`, `pop_last` | 1 (the whole path in one call) |
//! | every read | 0 |
//!
//! # Ownership
//! Elements are [`PFree`] values: the trait's method frees what an element owns (nothing, for
//! plain numbers and [`PPtr`]s; the block, for a [`PBytes`]; everything, for a nested
//! collection). `clear`, `truncate` and [`PFree::free_in`] of a collection free its elements
//! that way; methods that take an element out (`pop`, `remove`, `set`, `insert` replacing a
//! value) hand it back to the caller, who frees it (or stores it elsewhere).
//!
//! # Crash consistency
//! Everything rides on the undo-log transaction: after a crash, the next open rolls back
//! uncommitted transactions, so a collection is always found as it was before or after each
//! transaction. Growth allocates a new buffer in the transaction (a new block needs no undo
//! entry) and frees the old one at commit; slots beyond a vector's length are written with
//! [`Tx::mark_dirty`] (flushed at commit, no undo entry). docs/format.md ("Collections")
//! describes the layouts.
//!
//! # Examples
//! ```
//! use pmem_alloc::collections::{PBytes, PHashMap, PVec};
//! use pmem_alloc::pool::{Pool, PoolOptions};
//! use pmem_alloc::pptr::PSafe;
//! use pmem_alloc::tx::TxError;
//!
//! #[repr(C)]
//! struct Root {
//!     log: PVec<u64>,
//!     kv: PHashMap<PBytes, PBytes>,
//! }
//! // SAFETY: repr(C), PSafe fields.
//! unsafe impl PSafe for Root {}
//!
//! let dir = tempfile::tempdir()?;
//! let pool = Pool::create(&dir.path().join("c.pool"), 8 << 20, &PoolOptions::default())?;
//! let root = pool.root::<Root>()?;
//! pool.transaction(|tx| {
//!     let r = tx.get_mut(root)?;
//!     r.log.push(tx, 42)?;
//!     let v = PBytes::new(tx, b"world")?;
//!     r.kv.insert(tx, b"hello", v)?;
//!     Ok::<_, TxError>(())
//! })?;
//! pool.transaction(|tx| {
//!     let r = tx.get(root)?;
//!     assert_eq!(r.log.as_slice(tx)?, &[42]);
//!     assert_eq!(r.kv.get(tx, b"hello")?.unwrap().as_bytes(tx)?, b"world");
//!     Ok::<_, TxError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// `Default` (the empty map) and `PFree` (frees every entry and the tables or nodes, as
/// `clear`) for a map type `$map<K, V>` with `new` and `clear`.
macro_rules! map_default_and_free {
    ($map:ident) => {
        impl<K: $crate::pptr::PSafe, V: $crate::pptr::PSafe> Default for $map<K, V> {
            fn default() -> Self {
                Self::new()
            }
        }

        impl<K: $crate::collections::PKey, V: $crate::collections::PFree> $crate::collections::PFree
            for $map<K, V>
        {
            fn free_in<P: $crate::persist::Persist + 'static>(
                mut self,
                tx: &$crate::tx::Tx<'_, P>,
            ) -> Result<(), $crate::tx::TxError> {
                self.clear(tx)
            }
        }
    };
}

mod bytes;
mod deque;
mod hashmap;
mod ordmap;
mod vec;

pub use bytes::{PBytes, PString};
pub use deque::{PDeque, PDequeIter};
pub use hashmap::{PHashMap, PHashMapIter};
pub use ordmap::{POrdMap, POrdMapIter};
pub use vec::PVec;

use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};
use std::cmp::Ordering;

/// A value stored in a persistent collection, with what it owns.
///
/// [`PFree::free_in`] frees, in the transaction, every block the value owns; the default does
/// nothing (plain values, and [`PPtr`]s, which do not own their target). Collections call it
/// for the elements they drop (`clear`, `truncate`, `free_in`).
///
/// # Examples
/// ```
/// use pmem_alloc::collections::{PBytes, PFree, PVec};
/// use pmem_alloc::persist::Persist;
/// use pmem_alloc::pptr::PSafe;
/// use pmem_alloc::tx::{Tx, TxError};
///
/// /// A user record owning a byte string.
/// #[repr(C)]
/// struct Entry { id: u64, name: PBytes }
/// // SAFETY: repr(C), PSafe fields.
/// unsafe impl PSafe for Entry {}
/// impl PFree for Entry {
///     fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
///         self.name.free_in(tx)
///     }
/// }
/// // a PVec<Entry> now frees the names when it is cleared
/// let _v: PVec<Entry> = PVec::new();
/// ```
pub trait PFree: PSafe {
    /// Whether a value may contain [`PPtr`] words (tagged pointers). Collections write such
    /// values into unused capacity with an undo entry rather than unlogged
    /// ([`Tx::mark_dirty`]): an unlogged pointer left behind by an abort or a crash would make
    /// the recovery scan keep the block it names (a leak). `true` unless overridden; the
    /// plain number types say `false`.
    const MAY_HOLD_PPTR: bool = true;

    /// Frees (at commit) what this value owns.
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError>
    where
        Self: Sized,
    {
        let _ = tx;
        Ok(())
    }
}

macro_rules! pfree_plain {
    ($($t:ty),*) => { $( impl PFree for $t { const MAY_HOLD_PPTR: bool = false; } )* };
}
crate::pptr::with_plain_types!(pfree_plain);
impl<T: ?Sized + 'static> PFree for PPtr<T> {}
impl<T: PFree, const N: usize> PFree for [T; N] {
    const MAY_HOLD_PPTR: bool = T::MAY_HOLD_PPTR;
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        for x in self {
            x.free_in(tx)?;
        }
        Ok(())
    }
}

/// A key of [`PHashMap`] and [`POrdMap`]: hashed, compared and created from a borrowed
/// *lookup form* (`[u8]` for [`PBytes`], `str` for [`PString`], the number itself for
/// integers), so `map.get(tx, b"key")` allocates nothing.
///
/// Equal lookups must hash equally, and the stored key made by [`PKey::store`] must compare
/// equal to its lookup. The hash is part of the stored data (a hash map keeps each entry's
/// hash): it must never change between versions of a program.
///
/// # Examples
/// ```
/// use pmem_alloc::collections::{PBytes, PKey};
/// // the built-in hash of byte strings is stable and seeded
/// assert_eq!(<PBytes as PKey>::hash_lookup(1, b"a"), <PBytes as PKey>::hash_lookup(1, b"a"));
/// assert_ne!(<PBytes as PKey>::hash_lookup(1, b"a"), <PBytes as PKey>::hash_lookup(2, b"a"));
/// ```
pub trait PKey: PFree + Sized {
    /// The borrowed form used to look keys up.
    type Lookup: ?Sized;
    /// The hash of a lookup form under a map's `seed`.
    fn hash_lookup(seed: u64, key: &Self::Lookup) -> u64;
    /// Orders this stored key against a lookup form.
    fn cmp_lookup<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &Self::Lookup,
    ) -> Result<Ordering, TxError>;
    /// Whether this stored key equals a lookup form.
    fn eq_lookup<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &Self::Lookup,
    ) -> Result<bool, TxError> {
        Ok(self.cmp_lookup(tx, key)? == Ordering::Equal)
    }
    /// Creates the stored key (allocating in the transaction if needed).
    fn store<P: Persist + 'static>(tx: &Tx<'_, P>, key: &Self::Lookup) -> Result<Self, TxError>;
}

macro_rules! pkey_int {
    ($($t:ty),*) => { $(
        impl PKey for $t {
            type Lookup = $t;
            fn hash_lookup(seed: u64, key: &$t) -> u64 {
                hash_bytes(seed, &key.to_le_bytes())
            }
            fn cmp_lookup<P: Persist + 'static>(
                &self,
                _tx: &Tx<'_, P>,
                key: &$t,
            ) -> Result<Ordering, TxError> {
                Ok(self.cmp(key))
            }
            fn store<P: Persist + 'static>(_tx: &Tx<'_, P>, key: &$t) -> Result<$t, TxError> {
                Ok(*key)
            }
        }
    )* };
}
pkey_int!(u32, u64, i32, i64);

/// The stable hash of the collections (format 1 of the hash, never to change): words are
/// the little-endian 8-byte chunks of the input (the last one zero-padded);
/// `h = seed ^ (len * 0x9E3779B97F4A7C15)`, then per word
/// `h = rotl((h ^ w) * 0xFF51AFD7ED558CCD, 31)`, and finally `h ^= h >> 33;
/// h *= 0xC4CEB9FE1A85EC53; h ^= h >> 33`. Keyed by the seed each hash map keeps in its header
/// (random, chosen when its first table is allocated). It is fast and spreads well; it is not
/// a cryptographic PRF, so it does not stop an adversary who can observe bucket timings from
/// engineering collisions.
///
/// ```
/// use pmem_alloc::collections::hash_bytes;
/// assert_eq!(hash_bytes(0, b""), 0);
/// assert_ne!(hash_bytes(0, b"a"), hash_bytes(0, b"b"));
/// ```
pub fn hash_bytes(seed: u64, b: &[u8]) -> u64 {
    let mut h = seed ^ (b.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0xFF51_AFD7_ED55_8CCD).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0xFF51_AFD7_ED55_8CCD)
            .rotate_left(31);
    }
    mix64(h)
}

/// The final avalanche step of [`hash_bytes`].
pub(crate) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h
}

/// A random nonzero seed for a new hash map or ordered map.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// The 8 bytes that order scores as `f64::total_cmp` does when compared as bytes
/// (big-endian, sign bit flipped for positives, all bits flipped for negatives). A sorted
/// set keys a [`POrdMap<PBytes, ()>`](POrdMap) by `encode_score(score) ++ member`, which
/// orders by score, then member bytes, as Redis does.
///
/// ```
/// use pmem_alloc::collections::{decode_score, encode_score};
/// assert!(encode_score(-1.5) < encode_score(0.0));
/// assert!(encode_score(0.0) < encode_score(2.0));
/// assert!(encode_score(2.0) < encode_score(f64::INFINITY));
/// assert_eq!(decode_score(encode_score(-3.25)), -3.25);
/// ```
pub fn encode_score(score: f64) -> [u8; 8] {
    let b = score.to_bits();
    let k = if b >> 63 == 1 { !b } else { b | 1 << 63 };
    k.to_be_bytes()
}

/// The inverse of [`encode_score`].
///
/// ```
/// use pmem_alloc::collections::{decode_score, encode_score};
/// assert_eq!(decode_score(encode_score(7.0)), 7.0);
/// ```
pub fn decode_score(key: [u8; 8]) -> f64 {
    let k = u64::from_be_bytes(key);
    let b = if k >> 63 == 1 { k & !(1 << 63) } else { !k };
    f64::from_bits(b)
}

// ------------------------------------------------------------------------- raw access helpers

/// The address of `n` elements of `T` from `p`, checked: inside the heap (as
/// [`Tx::snapshot`]), aligned for `T`, no overflow. `n == 0` gives a dangling aligned pointer.
/// Every failure is [`TxError::Corrupt`]: the pointer and count come from a stored header.
pub(crate) fn elems<T, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    p: PPtr<T>,
    n: usize,
) -> Result<*mut T, TxError> {
    if n == 0 {
        return Ok(std::ptr::NonNull::<T>::dangling().as_ptr());
    }
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or(TxError::Corrupt)?;
    if !(p.offset() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(TxError::Corrupt);
    }
    let a = tx
        .raw_range(p.cast::<u8>(), bytes)
        .map_err(|_| TxError::Corrupt)?;
    Ok(a.cast())
}

/// The bytes of elements `from..to` (`from <= to`) of the buffer at `p`: address and length.
fn elem_bytes<T>(p: PPtr<T>, from: usize, to: usize) -> (PPtr<u8>, usize) {
    let sz = std::mem::size_of::<T>();
    (
        p.cast::<u8>().byte_add((from * sz) as u64),
        (to - from) * sz,
    )
}

/// Saves elements `from..to` of the buffer at `p` (one fence; nothing for an empty range).
pub(crate) fn save_elems<T, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    p: PPtr<T>,
    from: usize,
    to: usize,
) -> Result<(), TxError> {
    if from >= to {
        return Ok(());
    }
    let (at, len) = elem_bytes(p, from, to);
    tx.snapshot(at, len)
}

/// Prepares elements `from..to` of the buffer at `p`, beyond the length (unused), for writing:
/// registered for the commit flush without undo, unless `T` may hold pointers (then saved:
/// see [`PFree::MAY_HOLD_PPTR`]) or the slots were vacated earlier in this transaction (then
/// saved too: an abort must find the element that was there).
pub(crate) fn dirty_elems<T: PFree, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    p: PPtr<T>,
    from: usize,
    to: usize,
) -> Result<(), TxError> {
    if from >= to {
        return Ok(());
    }
    if T::MAY_HOLD_PPTR {
        return save_elems(tx, p, from, to);
    }
    let (at, len) = elem_bytes(p, from, to);
    tx.prepare_unused(at, len)
}

/// Allocates a zeroed buffer for `n` elements of `T` (at least one byte).
pub(crate) fn alloc_elems<T, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    n: usize,
) -> Result<PPtr<T>, TxError> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or(TxError::OutOfSpace)?;
    Ok(tx
        .alloc_raw(bytes, std::mem::align_of::<T>().max(16))?
        .cast())
}

/// The new capacity for a buffer of `cap` that must hold `need`: doubling, at least 4.
pub(crate) fn grown(cap: usize, need: usize) -> usize {
    need.max(cap.saturating_mul(2)).max(4)
}

/// Releases elements `from..to` (beyond the length now, their values moved out): records them
/// as vacated ([`Tx::note_vacated`]), and zeroes them if they hold a
/// word that looks like a [`PPtr`]: the recovery scan reads every word of a reachable block,
/// so a stale pointer left in unused capacity would keep the block it names allocated after a
/// crash (a leak until the slot is overwritten). Words that carry no tag are left alone (no
/// undo entry, no fence); tagged ones are saved (one fence) and zeroed.
pub(crate) fn scrub<T, P: Persist + 'static>(
    tx: &Tx<'_, P>,
    buf: PPtr<T>,
    base: *mut T,
    from: usize,
    to: usize,
) -> Result<(), TxError> {
    if from >= to {
        return Ok(());
    }
    let sz = std::mem::size_of::<T>();
    let start = base as usize + from * sz;
    let end = base as usize + to * sz;
    let mut tagged = false;
    let mut w = start & !7;
    while w < end && !tagged {
        // SAFETY: the words overlapping elements `from..to` of a checked buffer: the buffer is
        // a 16-byte aligned block whose size is a multiple of 16, so rounding the element range
        // out to whole words stays inside it (and inside the pool, whose size is a multiple of
        // the page size). Read as the recovery scan reads it (volatile, whatever it holds).
        let word = u64::from_le(unsafe { std::ptr::read_volatile(w as *const u64) });
        tagged = PPtr::<u8>::from_raw(word).raw() == word && word != 0;
        w += 8;
    }
    if tagged {
        save_elems(tx, buf, from, to)?;
        // SAFETY: elements `from..to` of the checked buffer, saved above; all-zero is a valid
        // PSafe value.
        unsafe { std::ptr::write_bytes(base.add(from), 0, to - from) };
    }
    // a later write to these slots in this transaction must save them (see `dirty_elems`)
    let (at, len) = elem_bytes(buf, from, to);
    tx.note_vacated(at, len)
}

/// A pointer to one stored `T` (a node), checked like [`elems`].
pub(crate) fn node<T, P: Persist + 'static>(tx: &Tx<'_, P>, p: PPtr<T>) -> Result<*mut T, TxError> {
    if p.is_null() {
        return Err(TxError::Corrupt);
    }
    elems(tx, p, 1)
}
