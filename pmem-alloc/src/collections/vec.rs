//! [`PVec`]: a growable persistent array.

use super::{alloc_elems, dirty_elems, elems, grown, save_elems, scrub, PFree};
use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};

/// A growable array in a pool (model: `Vec<T>`). The header (24 bytes: buffer, length,
/// capacity) lives wherever the application stores it; the elements in one buffer block.
/// See the [module documentation](crate::collections) for the access model.
///
/// Costs: `push` within capacity saves nothing but the header (the new slot lies beyond the
/// length: [`Tx::mark_dirty`]); growth doubles the capacity into a new block (no undo entry)
/// and frees the old buffer at commit; `set`/`get_mut` save one slot, `insert`/`remove` the
/// shifted tail, `pop`/`truncate` only the header.
///
/// # Examples
/// ```
/// use pmem_alloc::collections::PVec;
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<PVec<u64>>()?; // a zeroed header is an empty vector
/// pool.transaction(|tx| {
///     let v = tx.get_mut(root)?;
///     for i in 0..10 {
///         v.push(tx, i)?;
///     }
///     v.set(tx, 0, 100)?;
///     assert_eq!(v.pop(tx)?, Some(9));
///     Ok::<_, TxError>(())
/// })?;
/// pool.transaction(|tx| {
///     let v = tx.get(root)?;
///     assert_eq!(v.len(), 9);
///     assert_eq!(v.get(tx, 0)?, Some(&100));
///     assert_eq!(v.iter(tx)?.sum::<u64>(), 100 + (1..9).sum::<u64>());
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct PVec<T: PSafe> {
    buf: PPtr<T>,
    len: u64,
    cap: u64,
}

// SAFETY: repr(C); a PPtr and two u64: every bit pattern is valid (lengths are checked
// before use), no Drop, no handles.
unsafe impl<T: PSafe> PSafe for PVec<T> {}

const _: () = assert!(std::mem::size_of::<PVec<u64>>() == 24);

impl<T: PSafe> std::fmt::Debug for PVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PVec")
            .field("buf", &self.buf)
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl<T: PFree> Default for PVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PFree> PFree for PVec<T> {
    fn free_in<P: Persist + 'static>(mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.release(tx)
    }
}

impl<T: PFree> PVec<T> {
    /// An empty vector (no allocation; the same as a zeroed header).
    ///
    /// ```
    /// let v = pmem_alloc::collections::PVec::<u32>::new();
    /// assert!(v.is_empty());
    /// ```
    pub const fn new() -> Self {
        PVec {
            buf: PPtr::null(),
            len: 0,
            cap: 0,
        }
    }

    /// Number of elements (as stored; [`PVec::as_slice`] checks it against the capacity).
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PVec::<u8>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the vector is empty.
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PVec::<u8>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements the buffer holds without growing.
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PVec::<u8>::new().capacity(), 0);
    /// ```
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// The checked buffer: (address, len, cap).
    fn raw<P: Persist + 'static>(&self, tx: &Tx<'_, P>) -> Result<(*mut T, usize, usize), TxError> {
        let (len, cap) = (self.len as usize, self.cap as usize);
        if len > cap || (cap > 0) == self.buf.is_null() {
            return Err(TxError::Corrupt);
        }
        Ok((elems(tx, self.buf, cap)?, len, cap))
    }

    /// The elements as a slice.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u16>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.push(tx, 2)?;
    ///     assert_eq!(v.as_slice(tx)?, &[1, 2]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_slice<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<&'a [T], TxError> {
        let (p, len, _) = self.raw(tx)?;
        // SAFETY: `p..p+len` is inside the pool and aligned (checked by `raw`); every bit
        // pattern is a valid `T` (PSafe); the buffer is owned by this header, which is borrowed
        // shared for 'a (no `&mut self` method can run), and 'a is bounded by the transaction.
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// The element at `i`, or `None` past the end.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 7)?;
    ///     assert_eq!(v.get(tx, 0)?, Some(&7));
    ///     assert_eq!(v.get(tx, 1)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        i: usize,
    ) -> Result<Option<&'a T>, TxError> {
        Ok(self.as_slice(tx)?.get(i))
    }

    /// An iterator over the elements.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.push(tx, 2)?;
    ///     assert_eq!(v.iter(tx)?.copied().collect::<Vec<_>>(), vec![1, 2]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<std::slice::Iter<'a, T>, TxError> {
        Ok(self.as_slice(tx)?.iter())
    }

    /// The element at `i` for update (the slot is saved in the undo log first), or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     *v.get_mut(tx, 0)?.unwrap() += 1;
    ///     assert_eq!(v.get(tx, 0)?, Some(&2));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut<'a, P: Persist + 'static>(
        &'a mut self,
        tx: &'a Tx<'_, P>,
        i: usize,
    ) -> Result<Option<&'a mut T>, TxError> {
        let (p, len, _) = self.raw(tx)?;
        if i >= len {
            return Ok(None);
        }
        save_elems(tx, self.buf, i, i + 1)?;
        // SAFETY: slot `i < len` of the checked buffer; saved just above; the header is borrowed
        // mutably for 'a, so no other reference into the buffer exists.
        Ok(Some(unsafe { &mut *p.add(i) }))
    }

    /// Makes room for `additional` more elements (growing by doubling into a new block; the
    /// old one is freed at commit).
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.reserve(tx, 100)?;
    ///     assert!(v.capacity() >= 100);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        additional: usize,
    ) -> Result<(), TxError> {
        let (p, len, cap) = self.raw(tx)?;
        let need = len.checked_add(additional).ok_or(TxError::OutOfSpace)?;
        if need <= cap {
            return Ok(());
        }
        let new_cap = grown(cap, need);
        let nb = alloc_elems::<T, P>(tx, new_cap)?;
        let np = elems(tx, nb, new_cap)?;
        // SAFETY: the old buffer holds `len` elements (checked); the new block, allocated in
        // this transaction, holds `new_cap >= len`; distinct blocks.
        unsafe { std::ptr::copy_nonoverlapping(p, np, len) };
        let old = self.buf;
        self.buf = nb;
        self.cap = new_cap as u64;
        // SAFETY: the old buffer is this vector's block (its only link, replaced just above in
        // the saved header); freed once, at commit.
        unsafe { tx.free(old)? };
        Ok(())
    }

    /// Appends `v`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| tx.get_mut(root)?.push(tx, 3))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>, v: T) -> Result<(), TxError> {
        self.reserve(tx, 1)?;
        let (p, len, _) = self.raw(tx)?;
        // slot `len` is beyond the length: its old contents never matter
        dirty_elems(tx, self.buf, len, len + 1)?;
        // SAFETY: `len < cap` after `reserve`; the header is borrowed mutably.
        unsafe { p.add(len).write(v) };
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the last element (`None` if empty). The caller owns it.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     assert_eq!(v.pop(tx)?, None);
    ///     v.push(tx, 3)?;
    ///     assert_eq!(v.pop(tx)?, Some(3));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pop<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<Option<T>, TxError> {
        let (p, len, _) = self.raw(tx)?;
        if len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        // SAFETY: slot `len - 1` is inside the checked buffer; it is beyond the length now,
        // so the value moves out to the caller.
        let v = unsafe { p.add(len - 1).read() };
        scrub(tx, self.buf, p, len - 1, len)?;
        Ok(Some(v))
    }

    /// Replaces the element at `i`, returning the old one; [`TxError::OutOfRange`] past the
    /// end (`v` is then dropped: free it first if it owns blocks).
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     assert_eq!(v.set(tx, 0, 5)?, 1);
    ///     assert_eq!(v.set(tx, 1, 5), Err(TxError::OutOfRange));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        i: usize,
        v: T,
    ) -> Result<T, TxError> {
        let (p, len, _) = self.raw(tx)?;
        if i >= len {
            return Err(TxError::OutOfRange);
        }
        save_elems(tx, self.buf, i, i + 1)?;
        // SAFETY: slot `i < len`, saved above; the header is borrowed mutably.
        Ok(unsafe { std::ptr::replace(p.add(i), v) })
    }

    /// Inserts `v` at `i <= len`, shifting the tail (saved in one undo entry);
    /// [`TxError::OutOfRange`] beyond the length.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.push(tx, 3)?;
    ///     v.insert(tx, 1, 2)?;
    ///     assert_eq!(v.as_slice(tx)?, &[1, 2, 3]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        i: usize,
        v: T,
    ) -> Result<(), TxError> {
        if i > self.len as usize {
            return Err(TxError::OutOfRange);
        }
        self.reserve(tx, 1)?;
        let (p, len, _) = self.raw(tx)?;
        if T::MAY_HOLD_PPTR {
            save_elems(tx, self.buf, i, len + 1)?;
        } else {
            save_elems(tx, self.buf, i, len)?;
            dirty_elems(tx, self.buf, len, len + 1)?;
        }
        // SAFETY: `len < cap` after `reserve`; `i..=len` is inside the buffer; the moved range
        // was saved (or lies beyond the length); the header is borrowed mutably.
        unsafe {
            std::ptr::copy(p.add(i), p.add(i + 1), len - i);
            p.add(i).write(v);
        }
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the element at `i`, shifting the tail; [`TxError::OutOfRange`]
    /// past the end.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.push(tx, 2)?;
    ///     assert_eq!(v.remove(tx, 0)?, 1);
    ///     assert_eq!(v.as_slice(tx)?, &[2]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>, i: usize) -> Result<T, TxError> {
        let (p, len, _) = self.raw(tx)?;
        if i >= len {
            return Err(TxError::OutOfRange);
        }
        save_elems(tx, self.buf, i, len)?;
        // SAFETY: `i < len` inside the checked buffer; the range was saved; the header is
        // borrowed mutably. The value moves out to the caller.
        let v = unsafe {
            let v = p.add(i).read();
            std::ptr::copy(p.add(i + 1), p.add(i), len - i - 1);
            v
        };
        self.len -= 1;
        // the last slot still holds a copy of the (moved) last element
        scrub(tx, self.buf, p, len - 1, len)?;
        Ok(v)
    }
}

impl<T: PFree> PVec<T> {
    /// Shortens the vector to `n` elements, freeing the dropped ones ([`PFree`]); nothing if
    /// `n >= len`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     (0..5).try_for_each(|i| v.push(tx, i))?;
    ///     v.truncate(tx, 2)?;
    ///     assert_eq!(v.as_slice(tx)?, &[0, 1]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn truncate<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        n: usize,
    ) -> Result<(), TxError> {
        let (p, len, _) = self.raw(tx)?;
        if n >= len {
            return Ok(());
        }
        for i in n..len {
            // SAFETY: slot `i < len` of the checked buffer; the value is dropped from the
            // vector (the length is cut below), so it is read out exactly once.
            unsafe { p.add(i).read() }.free_in(tx)?;
        }
        scrub(tx, self.buf, p, n, len)?;
        self.len = n as u64;
        Ok(())
    }

    /// Removes every element (freeing them), keeping the buffer.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.clear(tx)?;
    ///     assert!(v.is_empty());
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.truncate(tx, 0)
    }

    /// Frees every element and the buffer; the vector is empty, without a buffer.
    ///
    /// ```
    /// # use pmem_alloc::collections::PVec;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("v.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PVec<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let v = tx.get_mut(root)?;
    ///     v.push(tx, 1)?;
    ///     v.release(tx)?;
    ///     assert_eq!(v.capacity(), 0);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.truncate(tx, 0)?;
        let old = self.buf;
        *self = PVec::new();
        // SAFETY: the buffer block of this vector (checked by `truncate`), unlinked just above
        // in the saved header; freed once, at commit (null is ignored).
        unsafe { tx.free(old) }
    }
}
