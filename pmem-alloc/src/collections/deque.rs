//! [`PDeque`]: a persistent ring buffer.

use super::{alloc_elems, dirty_elems, elems, grown, save_elems, scrub, PFree};
use crate::persist::Persist;
use crate::pptr::{PPtr, PSafe};
use crate::tx::{Tx, TxError};

/// A double-ended queue in a pool (model: `VecDeque<T>`): a ring buffer of `cap` slots,
/// `len` elements from slot `head` on, wrapping. Header: 32 bytes (buffer, capacity, head,
/// length). Both ends are O(1) amortised: a push writes one slot outside the live range (no
/// undo entry, [`Tx::mark_dirty`]) and the header; growth doubles into a new block, unwrapping
/// the ring (the old block is freed at commit). Access by position is O(1), so a Redis list's
/// `LRANGE start stop` is [`PDeque::range`]: O(k).
///
/// # Examples
/// ```
/// use pmem_alloc::collections::PDeque;
/// use pmem_alloc::pool::{Pool, PoolOptions};
/// use pmem_alloc::tx::TxError;
/// let dir = tempfile::tempdir()?;
/// let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
/// let root = pool.root::<PDeque<u64>>()?;
/// pool.transaction(|tx| {
///     let d = tx.get_mut(root)?;
///     d.push_back(tx, 2)?;
///     d.push_back(tx, 3)?;
///     d.push_front(tx, 1)?;
///     assert_eq!(d.range(tx, 1..3)?.copied().collect::<Vec<_>>(), vec![2, 3]);
///     assert_eq!(d.pop_front(tx)?, Some(1));
///     assert_eq!(d.pop_back(tx)?, Some(3));
///     Ok::<_, TxError>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[repr(C)]
pub struct PDeque<T: PSafe> {
    buf: PPtr<T>,
    cap: u64,
    head: u64,
    len: u64,
}

// SAFETY: repr(C); a PPtr and three u64 (checked before use); no Drop, no handles.
unsafe impl<T: PSafe> PSafe for PDeque<T> {}
const _: () = assert!(std::mem::size_of::<PDeque<u64>>() == 32);

impl<T: PSafe> std::fmt::Debug for PDeque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PDeque")
            .field("buf", &self.buf)
            .field("cap", &self.cap)
            .field("head", &self.head)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: PFree> Default for PDeque<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PFree> PFree for PDeque<T> {
    fn free_in<P: Persist + 'static>(mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.release(tx)
    }
}

/// An iterator over a range of a [`PDeque`] (front to back).
#[derive(Debug)]
pub struct PDequeIter<'a, T> {
    p: *const T,
    cap: usize,
    pos: usize,
    left: usize,
    _b: std::marker::PhantomData<&'a T>,
}

impl<'a, T> Iterator for PDequeIter<'a, T> {
    type Item = &'a T;
    fn next(&mut self) -> Option<&'a T> {
        if self.left == 0 {
            return None;
        }
        // SAFETY: `pos < cap`, a live slot of the checked buffer (built by `PDeque::range`);
        // the header is borrowed shared for 'a.
        let r = unsafe { &*self.p.add(self.pos) };
        self.pos = if self.pos + 1 == self.cap {
            0
        } else {
            self.pos + 1
        };
        self.left -= 1;
        Some(r)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<T> ExactSizeIterator for PDequeIter<'_, T> {}

impl<T: PFree> PDeque<T> {
    /// An empty deque (no allocation; the same as a zeroed header).
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PDeque::<u64>::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        PDeque {
            buf: PPtr::null(),
            cap: 0,
            head: 0,
            len: 0,
        }
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PDeque::<u64>::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Elements the buffer holds without growing.
    ///
    /// ```
    /// assert_eq!(pmem_alloc::collections::PDeque::<u64>::new().capacity(), 0);
    /// ```
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// Whether the deque is empty.
    ///
    /// ```
    /// assert!(pmem_alloc::collections::PDeque::<u64>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checked buffer: (address, cap, head, len).
    fn raw<P: Persist + 'static>(
        &self,
        tx: &Tx<'_, P>,
    ) -> Result<(*mut T, usize, usize, usize), TxError> {
        let (cap, head, len) = (self.cap as usize, self.head as usize, self.len as usize);
        if len > cap || (head >= cap && cap > 0) || (cap > 0) == self.buf.is_null() {
            return Err(TxError::Corrupt);
        }
        Ok((elems(tx, self.buf, cap)?, cap, head, len))
    }

    fn slot(head: usize, i: usize, cap: usize) -> usize {
        let s = head + i;
        if s >= cap {
            s - cap
        } else {
            s
        }
    }

    /// The element at position `i` from the front, or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_front(tx, 5)?;
    ///     assert_eq!(d.get(tx, 0)?, Some(&5));
    ///     assert_eq!(d.get(tx, 1)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        i: usize,
    ) -> Result<Option<&'a T>, TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        if i >= len {
            return Ok(None);
        }
        // SAFETY: a live slot of the checked buffer; the header is borrowed shared for 'a.
        Ok(Some(unsafe { &*p.add(Self::slot(head, i, cap)) }))
    }

    /// The element at position `i` for update (its slot saved first), or `None`.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 5)?;
    ///     *d.get_mut(tx, 0)?.unwrap() = 6;
    ///     assert_eq!(d.get(tx, 0)?, Some(&6));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_mut<'a, P: Persist + 'static>(
        &'a mut self,
        tx: &'a Tx<'_, P>,
        i: usize,
    ) -> Result<Option<&'a mut T>, TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        if i >= len {
            return Ok(None);
        }
        let s = Self::slot(head, i, cap);
        save_elems(tx, self.buf, s, s + 1)?;
        // SAFETY: a live slot, saved above; the header is borrowed mutably for 'a.
        Ok(Some(unsafe { &mut *p.add(s) }))
    }

    /// The elements at positions `r` (clamped to the length), front to back: O(k).
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     (0..10).try_for_each(|i| d.push_back(tx, i))?;
    ///     assert_eq!(d.range(tx, 8..100)?.copied().collect::<Vec<_>>(), vec![8, 9]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn range<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
        r: std::ops::Range<usize>,
    ) -> Result<PDequeIter<'a, T>, TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        let end = r.end.min(len);
        let start = r.start.min(end);
        Ok(PDequeIter {
            p,
            cap,
            pos: if cap == 0 {
                0
            } else {
                Self::slot(head, start, cap)
            },
            left: end - start,
            _b: std::marker::PhantomData,
        })
    }

    /// Every element, front to back.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 1)?;
    ///     d.push_front(tx, 0)?;
    ///     assert_eq!(d.iter(tx)?.copied().collect::<Vec<_>>(), vec![0, 1]);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter<'a, P: Persist + 'static>(
        &'a self,
        tx: &'a Tx<'_, P>,
    ) -> Result<PDequeIter<'a, T>, TxError> {
        self.range(tx, 0..usize::MAX)
    }

    /// Ensures room for one more element: a doubled buffer holding the elements from slot 0.
    fn grow_for_one<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        if len < cap {
            return Ok(());
        }
        let new_cap = grown(cap, len + 1);
        let nb = alloc_elems::<T, P>(tx, new_cap)?;
        let np = elems(tx, nb, new_cap)?;
        let first = (cap - head).min(len);
        // SAFETY: the live elements are `head..head+first` and `0..len-first` of the checked
        // old buffer; the new block (fresh, `new_cap > len` slots) is distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(p.add(head), np, first);
            std::ptr::copy_nonoverlapping(p, np.add(first), len - first);
        }
        let old = std::mem::replace(&mut self.buf, nb);
        self.cap = new_cap as u64;
        self.head = 0;
        // SAFETY: the old buffer of this deque, unlinked above in the saved header; freed once,
        // at commit (null is ignored).
        unsafe { tx.free(old) }
    }

    /// Appends `v` at the back.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| tx.get_mut(root)?.push_back(tx, 1))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_back<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>, v: T) -> Result<(), TxError> {
        self.grow_for_one(tx)?;
        let (p, cap, head, len) = self.raw(tx)?;
        let s = Self::slot(head, len, cap);
        dirty_elems(tx, self.buf, s, s + 1)?;
        // SAFETY: `len < cap`: slot `s` is free (outside the live range); header borrowed
        // mutably.
        unsafe { p.add(s).write(v) };
        self.len += 1;
        Ok(())
    }

    /// Prepends `v` at the front.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| tx.get_mut(root)?.push_front(tx, 1))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_front<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
        v: T,
    ) -> Result<(), TxError> {
        self.grow_for_one(tx)?;
        let (p, cap, head, _) = self.raw(tx)?;
        let s = if head == 0 { cap - 1 } else { head - 1 };
        dirty_elems(tx, self.buf, s, s + 1)?;
        // SAFETY: `len < cap`: slot `s` is free; header borrowed mutably.
        unsafe { p.add(s).write(v) };
        self.head = s as u64;
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the front element (`None` if empty).
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 1)?;
    ///     assert_eq!(d.pop_front(tx)?, Some(1));
    ///     assert_eq!(d.pop_front(tx)?, None);
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pop_front<P: Persist + 'static>(
        &mut self,
        tx: &Tx<'_, P>,
    ) -> Result<Option<T>, TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        if len == 0 {
            return Ok(None);
        }
        self.head = Self::slot(head, 1, cap) as u64;
        self.len -= 1;
        // SAFETY: the front slot, live until the header change above; moved to the caller.
        let v = unsafe { p.add(head).read() };
        scrub(tx, self.buf, p, head, head + 1)?;
        Ok(Some(v))
    }

    /// Removes and returns the back element (`None` if empty).
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 1)?;
    ///     d.push_back(tx, 2)?;
    ///     assert_eq!(d.pop_back(tx)?, Some(2));
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pop_back<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<Option<T>, TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        if len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        let s = Self::slot(head, len - 1, cap);
        // SAFETY: the back slot, live until the header change above; moved to the caller.
        let v = unsafe { p.add(s).read() };
        scrub(tx, self.buf, p, s, s + 1)?;
        Ok(Some(v))
    }
}

impl<T: PFree> PDeque<T> {
    /// Removes every element (freeing them), keeping the buffer.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 1)?;
    ///     d.clear(tx)?;
    ///     assert!(d.is_empty());
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        let (p, cap, head, len) = self.raw(tx)?;
        for i in 0..len {
            // SAFETY: a live slot; the length is cut below, so each value is read out once.
            unsafe { p.add(Self::slot(head, i, cap)).read() }.free_in(tx)?;
        }
        scrub(tx, self.buf, p, 0, cap)?;
        self.len = 0;
        self.head = 0;
        Ok(())
    }

    /// Frees every element and the buffer; the deque is empty, without a buffer.
    ///
    /// ```
    /// # use pmem_alloc::collections::PDeque;
    /// # use pmem_alloc::pool::{Pool, PoolOptions};
    /// # use pmem_alloc::tx::TxError;
    /// # let dir = tempfile::tempdir()?;
    /// # let pool = Pool::create(&dir.path().join("d.pool"), 8 << 20, &PoolOptions::default())?;
    /// let root = pool.root::<PDeque<u64>>()?;
    /// pool.transaction(|tx| {
    ///     let d = tx.get_mut(root)?;
    ///     d.push_back(tx, 1)?;
    ///     d.release(tx)?;
    ///     Ok::<_, TxError>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release<P: Persist + 'static>(&mut self, tx: &Tx<'_, P>) -> Result<(), TxError> {
        self.clear(tx)?;
        let old = std::mem::take(self).buf;
        // SAFETY: the buffer of this deque (checked by `clear`), unlinked above; freed once,
        // at commit (null is ignored).
        unsafe { tx.free(old) }
    }
}
