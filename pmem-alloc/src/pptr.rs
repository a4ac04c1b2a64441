//! Offset pointers for data in a pool, and the marker trait for types allowed in persistent
//! memory.
//!
//! A [`PPtr<T>`] is 8 bytes: the offset of the target from the pool base, with a 16-bit tag in
//! the top bits (`0x504D`, "PM"); 0 is null. The tag lets the recovery scan tell pointers from
//! integers, so an integer that merely looks like an offset does not keep garbage alive. A
//! `PPtr` means nothing without its pool: resolve it with [`crate::pool::Pool::get`], which checks
//! bounds and alignment, so a pointer from another pool or a corrupted word cannot reach memory
//! outside the pool.

use crate::layout::{PPTR_OFFSET_MASK, PPTR_TAG};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// Types that may be stored in persistent memory.
///
/// # Safety
/// Implement only for types that
/// - contain no references, raw pointers, `Box`/`Vec`/`String` or other process-local handles
///   (use [`PPtr`] for links),
/// - contain no interior-mutability wrappers other than atomics (`Cell`, `RefCell`, `Mutex`
///   hold process-local state),
/// - are valid for the all-zero bit pattern and for any bit pattern a crash can leave
///   (integers, floats, arrays of those, `PPtr`, atomics; **not** `bool`, `char`, enums or
///   `NonZero*`, which have invalid bit patterns),
/// - have a stable layout (`#[repr(C)]` or `#[repr(transparent)]` for structs), and
/// - do not need `Drop`.
///
/// ```
/// use pmem_alloc::pptr::{PPtr, PSafe};
/// #[repr(C)]
/// #[derive(Clone, Copy)]
/// struct Node { value: u64, next: PPtr<Node> }
/// // SAFETY: repr(C), only PSafe fields, no invalid bit patterns, no Drop.
/// unsafe impl PSafe for Node {}
/// ```
pub unsafe trait PSafe: 'static {}

macro_rules! psafe {
    ($($t:ty),*) => { $(
        // SAFETY: plain integers/floats/atomics: every bit pattern is valid, no Drop, no handles.
        unsafe impl PSafe for $t {}
    )* };
}

/// Calls the macro `$m` with the plain types: integers, floats and `()` (every bit pattern
/// valid, no pointer). One list for [`PSafe`] and [`PFree`](crate::collections::PFree).
macro_rules! with_plain_types {
    ($m:ident) => {
        $m! { u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, () }
    };
}
pub(crate) use with_plain_types;

with_plain_types!(psafe);
psafe!(
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicUsize
);
// SAFETY: an array of PSafe elements satisfies every condition element-wise.
unsafe impl<T: PSafe, const N: usize> PSafe for [T; N] {}
// SAFETY: a PPtr is a u64.
unsafe impl<T: ?Sized + 'static> PSafe for PPtr<T> {}
// SAFETY: an AtomicPPtr is an AtomicU64.
unsafe impl<T: ?Sized + 'static> PSafe for AtomicPPtr<T> {}

/// An 8-byte typed offset pointer into a pool (0 = null).
///
/// # Examples
/// ```
/// use pmem_alloc::pptr::PPtr;
/// let p: PPtr<u64> = PPtr::from_offset(4096);
/// assert_eq!(p.offset(), 4096);
/// assert!(!p.is_null());
/// assert!(PPtr::<u64>::null().is_null());
/// assert_eq!(PPtr::<u64>::from_raw(p.raw()), p);
/// ```
#[repr(transparent)]
pub struct PPtr<T: ?Sized> {
    raw: u64,
    _t: PhantomData<fn() -> *const T>,
}

impl<T: ?Sized> Clone for PPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for PPtr<T> {}
impl<T: ?Sized> PartialEq for PPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        self.raw == o.raw
    }
}
impl<T: ?Sized> Eq for PPtr<T> {}
impl<T: ?Sized> std::hash::Hash for PPtr<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.raw.hash(h)
    }
}
impl<T: ?Sized> Default for PPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}
impl<T: ?Sized> std::fmt::Debug for PPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_null() {
            write!(f, "PPtr(null)")
        } else {
            write!(f, "PPtr({:#x})", self.offset())
        }
    }
}

const _: () = assert!(std::mem::size_of::<PPtr<u64>>() == 8);

impl<T: ?Sized> PPtr<T> {
    /// The null pointer.
    pub const fn null() -> Self {
        PPtr {
            raw: 0,
            _t: PhantomData,
        }
    }

    /// A pointer to `offset` (0 gives null). Offsets must be below 2^48.
    pub const fn from_offset(offset: u64) -> Self {
        PPtr {
            raw: if offset == 0 {
                0
            } else {
                PPTR_TAG | (offset & PPTR_OFFSET_MASK)
            },
            _t: PhantomData,
        }
    }

    /// Rebuilds a pointer from its stored word (as read from the media). A word without the tag
    /// is treated as null.
    pub const fn from_raw(raw: u64) -> Self {
        PPtr {
            raw: if raw & !PPTR_OFFSET_MASK == PPTR_TAG {
                raw
            } else {
                0
            },
            _t: PhantomData,
        }
    }

    /// The stored word.
    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// Whether this is null.
    pub const fn is_null(self) -> bool {
        self.raw == 0
    }

    /// Offset from the pool base (0 for null).
    pub const fn offset(self) -> u64 {
        self.raw & PPTR_OFFSET_MASK
    }

    /// The same address as another type.
    pub const fn cast<U: ?Sized>(self) -> PPtr<U> {
        PPtr {
            raw: self.raw,
            _t: PhantomData,
        }
    }

    /// `bytes` further on (null stays null).
    pub const fn byte_add(self, bytes: u64) -> Self {
        if self.is_null() {
            self
        } else {
            Self::from_offset(self.offset() + bytes)
        }
    }
}

/// An atomic [`PPtr`] for lock-free structures in persistent memory. Atomicity is about
/// visibility between threads; durability still needs a persist after the store.
///
/// # Examples
/// ```
/// use pmem_alloc::pptr::{AtomicPPtr, PPtr};
/// use std::sync::atomic::Ordering;
/// let a = AtomicPPtr::<u64>::null();
/// let p = PPtr::from_offset(8192);
/// assert!(a.compare_exchange(PPtr::null(), p, Ordering::AcqRel, Ordering::Acquire).is_ok());
/// assert_eq!(a.load(Ordering::Acquire), p);
/// ```
#[repr(transparent)]
pub struct AtomicPPtr<T: ?Sized> {
    raw: AtomicU64,
    _t: PhantomData<fn() -> *const T>,
}

impl<T: ?Sized> std::fmt::Debug for AtomicPPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Atomic{:?}", self.load(Ordering::Relaxed))
    }
}

impl<T: ?Sized> AtomicPPtr<T> {
    /// A null atomic pointer.
    pub const fn null() -> Self {
        AtomicPPtr {
            raw: AtomicU64::new(0),
            _t: PhantomData,
        }
    }
    /// Loads.
    pub fn load(&self, o: Ordering) -> PPtr<T> {
        PPtr::from_raw(self.raw.load(o))
    }
    /// Stores.
    pub fn store(&self, p: PPtr<T>, o: Ordering) {
        self.raw.store(p.raw, o)
    }
    /// Swaps.
    pub fn swap(&self, p: PPtr<T>, o: Ordering) -> PPtr<T> {
        PPtr::from_raw(self.raw.swap(p.raw, o))
    }
    /// Compare-and-exchange.
    pub fn compare_exchange(
        &self,
        current: PPtr<T>,
        new: PPtr<T>,
        success: Ordering,
        failure: Ordering,
    ) -> Result<PPtr<T>, PPtr<T>> {
        self.raw
            .compare_exchange(current.raw, new.raw, success, failure)
            .map(PPtr::from_raw)
            .map_err(PPtr::from_raw)
    }
}
