//! [`PBytes`] and [`PString`]: byte strings in one block.

use super::{hash_bytes, PFree, PKey};
use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};
use std::cmp::Ordering;

/// The block header of a byte string; the bytes follow it.
#[repr(C)]
struct BytesHead {
    len: u64,
    cap: u64,
}
const HEAD: usize = std::mem::size_of::<BytesHead>();
const _: () = assert!(HEAD == 16);

/// A byte string in a pool (model: `Vec<u8>`): an 8-byte handle naming one block that holds
/// the length, the capacity and the bytes (`len (8) | cap (8) | bytes (cap)`), so a small
/// string costs one allocation. The empty string is the null handle (no block). The capacity
/// is the block's usable size; appends within it write only beyond the length (no undo entry
/// for the bytes, one 8-byte entry for the length).
///
/// A `PBytes` owns its block: free it with [`PFree::free_in`] (collections do that for the
/// values they drop). It is [`PKey`] with the lookup form `[u8]`.
///
/// # Examples
/// ```
/// use pmem_alloc::collections::PBytes;
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<PBytes>()?;
/// pool.transaction(|tx| {
///     let s = tx.get_mut(root)?;
///     s.append(tx, b"hello")?;
///     s.append(tx, b" world")?;
///     s.set_range(tx, 0, b"H")?;
///     assert_eq!(s.as_bytes(tx)?, b"Hello world");
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct PBytes {
    block: PPtr<BytesHead>,
}

// SAFETY: repr(C), one PPtr; no Drop, no handles.
unsafe impl PSafe for PBytes {}
const _: () = assert!(std::mem::size_of::<PBytes>() == 8);

impl std::fmt::Debug for PBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PBytes({:?})", self.block)
    }
}

impl Default for PBytes {
    fn default() -> Self {
        Self::empty()
    }
}

impl PFree for PBytes {
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        // SAFETY: the handle owns its block (consumed here, so freed once); null is ignored.
        unsafe { tx.free(self.block) }
    }
}

impl PKey for PBytes {
    type Lookup = [u8];
    fn hash_lookup(seed: u64, key: &[u8]) -> u64 {
        hash_bytes(seed, key)
    }
    fn cmp_lookup<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &[u8],
    ) -> Result<Ordering, TxError> {
        Ok(self.as_bytes(tx)?.cmp(key))
    }
    fn store<P: Persist + 'static>(tx: &Tx<'_, P>, key: &[u8]) -> Result<Self, TxError> {
        PBytes::new(tx, key)
    }
}

/// A checked view of a byte string's block.
struct Raw {
    head: *mut BytesHead,
    len: usize,
    cap: usize,
}

impl Raw {
    fn data(&self) -> *mut u8 {
        self.head.cast::<u8>().wrapping_add(HEAD)
    }
}

impl PBytes {
    /// The empty string (no block).
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PBytes::empty().is_empty());
    /// ```
    pub const fn empty() -> Self {
        PBytes {
            block: PPtr::null(),
        }
    }

    /// Whether this is the empty string without a block. (A string emptied by
    /// [`PBytes::truncate`] keeps its block: use [`PBytes::len`].)
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PBytes::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.block.is_null()
    }

    /// A new string holding `b` (one block of `16 + b.len()` bytes, rounded up to its size
    /// class; none for an empty `b`).
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PBytes>()?;
    /// pool.transaction(|tx| {
    ///     *tx.get_mut(root)? = PBytes::new(tx, b"value")?;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new<P: Persist + 'static>(tx: &Tx<'_, P>, b: &[u8]) -> Result<Self, TxError> {
        if b.is_empty() {
            return Ok(Self::empty());
        }
        let (block, raw) = Self::alloc(tx, b.len())?;
        // SAFETY: a fresh block of this transaction with room for `cap >= b.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), raw.data(), b.len());
            (*raw.head).len = b.len() as u64;
        }
        Ok(PBytes { block })
    }

    /// Allocates a block for at least `cap` bytes; the header records the usable capacity
    /// and length 0.
    fn alloc<P: Persist + 'static>(
        tx: &Tx<'_, P>,
        cap: usize,
    ) -> Result<(PPtr<BytesHead>, Raw), TxError> {
        let size = cap.checked_add(HEAD).ok_or(TxError::OutOfSpace)?;
        let block = tx.alloc_raw(size, 16)?;
        // SAFETY: a live block just allocated.
        let usable = unsafe { tx.pool().usable_size(block) };
        let head = tx.raw_range(block, usable)?.cast::<BytesHead>();
        let cap = usable - HEAD;
        // SAFETY: a fresh, zeroed block of this transaction, 16-byte aligned.
        unsafe { (*head).cap = cap as u64 };
        Ok((block.cast(), Raw { head, len: 0, cap }))
    }

    /// The checked block (None for the empty string).
    fn raw<P: Persist + 'static>(&self, tx: &Tx<'_, P>) -> Result<Option<Raw>, TxError> {
        if self.block.is_null() {
            return Ok(None);
        }
        let bad = |_| TxError::Corrupt;
        if !self.block.offset().is_multiple_of(16) {
            return Err(TxError::Corrupt);
        }
        let head = tx.raw_range(self.block.cast(), HEAD).map_err(bad)?;
        // SAFETY: 16 bytes inside the pool, 16-byte aligned (checked above); integers.
        let (len, cap) = unsafe {
            let h = head.cast::<BytesHead>();
            ((*h).len, (*h).cap)
        };
        if len > cap || cap > (isize::MAX as u64) {
            return Err(TxError::Corrupt);
        }
        tx.raw_range(self.block.cast(), HEAD + cap as usize)
            .map_err(bad)?;
        Ok(Some(Raw {
            head: head.cast(),
            len: len as usize,
            cap: cap as usize,
        }))
    }

    /// The bytes.
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     let s = PBytes::new(tx, b"abc")?;
    ///     assert_eq!(s.as_bytes(tx)?, b"abc");
    ///     assert_eq!(PBytes::empty().as_bytes(tx)?, b"");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_bytes<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<&'a [u8], TxError> {
        Ok(match self.raw(tx)? {
            None => &[],
            // SAFETY: `len <= cap` bytes inside the pool (checked by `raw`); the block is
            // owned by this handle, borrowed shared for 'a (bounded by the transaction).
            Some(r) => unsafe { std::slice::from_raw_parts(r.data(), r.len) },
        })
    }

    /// Length in bytes.
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(PBytes::new(tx, b"abc")?.len(tx)?, 3);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len<P: Persist + 'static>(&self, tx: &Tx<'_, P>) -> Result<usize, TxError> {
        Ok(self.raw(tx)?.map_or(0, |r| r.len))
    }

    /// Makes the string `new_len` bytes long, growing the block if needed, with the bytes in
    /// `at..new_len` about to be written (ranges below the old length are saved, ranges beyond
    /// it only registered for flushing). Returns the data pointer.
    fn prepare<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        at: usize,
        new_len: usize,
    ) -> Result<*mut u8, TxError> {
        let old = self.raw(tx)?;
        let (len, cap) = old.as_ref().map_or((0, 0), |r| (r.len, r.cap));
        let raw = if new_len > cap {
            let (block, raw) = Self::alloc(tx, new_len.max(cap.saturating_mul(2)))?;
            if let Some(o) = &old {
                // SAFETY: the old block holds `len` bytes; the new one, fresh, `cap > len`.
                unsafe { std::ptr::copy_nonoverlapping(o.data(), raw.data(), len) };
            }
            let prev = std::mem::replace(&mut self.block, block);
            // SAFETY: the old block of this handle (its only link, replaced above in memory
            // the caller saved); freed once, at commit. Null is ignored.
            unsafe { tx.free(prev)? };
            raw
        } else {
            let r = old.ok_or(TxError::Corrupt)?;
            let base = self.block.cast::<u8>().byte_add(HEAD as u64);
            // bytes below the old length keep an undo entry, and so does the length word (one
            // fence for both)
            let mut save: [(PPtr<u8>, usize); 2] = [(PPtr::null(), 0); 2];
            if at < len {
                save[0] = (base.byte_add(at as u64), len.min(new_len) - at);
            }
            if new_len != len {
                save[1] = (self.block.cast(), 8);
            }
            let n = save.iter().filter(|r| r.1 > 0).count();
            save.sort_by_key(|r| std::cmp::Reverse(r.1 > 0));
            tx.snapshot_many(&save[..n])?;
            // everything beyond the old length (the zero padding included) is new: a flush
            // suffices, unless a truncate of this transaction released it
            if new_len > len {
                tx.prepare_unused(base.byte_add(len as u64), new_len - len)?;
            }
            r
        };
        // SAFETY: the block's header (saved above, or fresh); `new_len <= cap`.
        unsafe { (*raw.head).len = new_len as u64 };
        if at > len {
            // SAFETY: the gap `len..at` lies inside the block (`at <= new_len <= cap`) and was
            // registered above (or is fresh); Redis-style zero padding.
            unsafe { std::ptr::write_bytes(raw.data().add(len), 0, at - len) };
        }
        Ok(raw.data())
    }

    /// Appends `b`; returns the new length.
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PBytes>()?;
    /// pool.transaction(|tx| {
    ///     let s = tx.get_mut(root)?;
    ///     assert_eq!(s.append(tx, b"ab")?, 2);
    ///     assert_eq!(s.append(tx, b"c")?, 3);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn append<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        b: &[u8],
    ) -> Result<usize, TxError> {
        if b.is_empty() {
            return self.len(tx);
        }
        let len = self.len(tx)?;
        let new_len = len.checked_add(b.len()).ok_or(TxError::OutOfSpace)?;
        let data = self.prepare(tx, len, new_len)?;
        // SAFETY: `len..new_len` lies inside the block (prepared) and was registered.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), data.add(len), b.len()) };
        Ok(new_len)
    }

    /// Overwrites the bytes from `at` with `b`, extending the string (zero-padded if `at` is
    /// beyond its end) as Redis's SETRANGE does; returns the new length.
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PBytes>()?;
    /// pool.transaction(|tx| {
    ///     let s = tx.get_mut(root)?;
    ///     s.append(tx, b"hello")?;
    ///     s.set_range(tx, 1, b"EL")?;
    ///     assert_eq!(s.as_bytes(tx)?, b"hELlo");
    ///     s.set_range(tx, 7, b"!")?;
    ///     assert_eq!(s.as_bytes(tx)?, b"hELlo\0\0!");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_range<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        at: usize,
        b: &[u8],
    ) -> Result<usize, TxError> {
        let len = self.len(tx)?;
        if b.is_empty() {
            return Ok(len);
        }
        let end = at.checked_add(b.len()).ok_or(TxError::OutOfRange)?;
        if end > isize::MAX as usize / 2 {
            return Err(TxError::OutOfRange);
        }
        let data = self.prepare(tx, at, end.max(len))?;
        // SAFETY: `at..end` lies inside the block (prepared) and was saved or registered.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), data.add(at), b.len()) };
        Ok(end.max(len))
    }

    /// Shortens the string to `n` bytes (nothing if it is not longer); the block is kept.
    ///
    /// ```
    /// # use pmem_alloc::collections::PBytes;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("b.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     let mut s = PBytes::new(tx, b"hello")?;
    ///     s.truncate(tx, 2)?;
    ///     assert_eq!(s.as_bytes(tx)?, b"he");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn truncate<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        n: usize,
    ) -> Result<(), TxError> {
        let Some(r) = self.raw(tx)? else {
            return Ok(());
        };
        if n < r.len {
            tx.snapshot(self.block, 8)?;
            let data = self.block.cast::<u8>().byte_add(HEAD as u64);
            tx.note_vacated(data.byte_add(n as u64), r.len - n)?;
            // SAFETY: the block's header, saved just above.
            unsafe { (*r.head).len = n as u64 };
        }
        Ok(())
    }
}

/// A UTF-8 string in a pool: a [`PBytes`] whose contents are checked when read
/// ([`TxError::Corrupt`] if not UTF-8). [`PKey`] with the lookup form `str`.
///
/// # Examples
/// ```
/// use pmem_alloc::collections::PString;
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<PString>()?;
/// pool.transaction(|tx| {
///     let s = tx.get_mut(root)?;
///     s.push_str(tx, "grüß ")?;
///     s.push_str(tx, "dich")?;
///     assert_eq!(s.as_str(tx)?, "grüß dich");
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct PString(PBytes);

// SAFETY: repr(transparent) over a PSafe type.
unsafe impl PSafe for PString {}

impl PFree for PString {
    fn free_in<P: Persist + 'static>(self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.0.free_in(tx)
    }
}

impl PKey for PString {
    type Lookup = str;
    fn hash_lookup(seed: u64, key: &str) -> u64 {
        hash_bytes(seed, key.as_bytes())
    }
    fn cmp_lookup<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
        key: &str,
    ) -> Result<Ordering, TxError> {
        Ok(self.0.as_bytes(tx)?.cmp(key.as_bytes()))
    }
    fn store<P: Persist + 'static>(tx: &Tx<'_, P>, key: &str) -> Result<Self, TxError> {
        PString::new(tx, key)
    }
}

impl PString {
    /// A new string holding `s`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PString;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(PString::new(tx, "x")?.as_str(tx)?, "x");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new<P: Persist + 'static>(tx: &Tx<'_, P>, s: &str) -> Result<Self, TxError> {
        Ok(PString(PBytes::new(tx, s.as_bytes())?))
    }

    /// The text; [`TxError::Corrupt`] if the stored bytes are not UTF-8.
    ///
    /// ```
    /// # use pmem_alloc::collections::PString;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(PString::default().as_str(tx)?, "");
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_str<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<&'a str, TxError> {
        std::str::from_utf8(self.0.as_bytes(tx)?).map_err(|_| TxError::Corrupt)
    }

    /// Appends `s`; returns the new length in bytes.
    ///
    /// ```
    /// # use pmem_alloc::collections::PString;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     let mut s = PString::new(tx, "a")?;
    ///     assert_eq!(s.push_str(tx, "bc")?, 3);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_str<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        s: &str,
    ) -> Result<usize, TxError> {
        self.0.append(tx, s.as_bytes())
    }

    /// The bytes, unchecked.
    ///
    /// ```
    /// # use pmem_alloc::collections::PString;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("s.pool"), 8 << 20, &PoolOptions::default())?;
    /// pool.transaction(|tx| {
    ///     assert_eq!(PString::new(tx, "ab")?.as_pbytes().len(tx)?, 2);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_pbytes(&self) -> &PBytes {
        &self.0
    }
}
