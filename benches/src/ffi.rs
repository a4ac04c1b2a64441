//! The few libpmem (PMDK 1.x) entry points the comparison needs, declared by hand.
//!
//! Only compiled with the `libpmem` feature; `build.rs` then links `-lpmem`. The signatures
//! follow `libpmem.h` of PMDK 1.12 (Linux: the plain names are the UTF-8 variants).
//!
//! libpmem reads most of its environment (`PMEM_NO_CLWB`, `PMEM_NO_CLFLUSHOPT`,
//! `PMEM_NO_MOVNT`, `PMEM_MOVNT_THRESHOLD`, ...) in its library constructor, i.e. when the
//! dynamic loader maps it, before `main`. Those variables must therefore be in the
//! environment when the process starts: the `compare` binary re-executes itself with them
//! (see `peer::libpmem_env`). `PMEM_IS_PMEM_FORCE` alone is read lazily, on the first
//! `pmem_is_pmem` call.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::path::Path;

/// Major version this binding was written against.
pub const PMEM_MAJOR_VERSION: c_uint = 1;
/// Minor version this binding was written against.
pub const PMEM_MINOR_VERSION: c_uint = 1;

mod raw {
    use super::*;

    // Linked by build.rs (`cargo:rustc-link-lib=dylib=pmem`) when the feature is on.
    extern "C" {
        pub(super) fn pmem_map_file(
            path: *const c_char,
            len: usize,
            flags: c_int,
            mode: libc_mode_t,
            mapped_lenp: *mut usize,
            is_pmemp: *mut c_int,
        ) -> *mut c_void;
        pub(super) fn pmem_unmap(addr: *mut c_void, len: usize) -> c_int;
        pub(super) fn pmem_is_pmem(addr: *const c_void, len: usize) -> c_int;
        pub(super) fn pmem_persist(addr: *const c_void, len: usize);
        pub(super) fn pmem_flush(addr: *const c_void, len: usize);
        pub(super) fn pmem_drain();
        pub(super) fn pmem_memcpy_persist(
            dst: *mut c_void,
            src: *const c_void,
            len: usize,
        ) -> *mut c_void;
        pub(super) fn pmem_memset_persist(dst: *mut c_void, c: c_int, len: usize) -> *mut c_void;
        pub(super) fn pmem_check_version(major: c_uint, minor: c_uint) -> *const c_char;
        pub(super) fn pmem_errormsg() -> *const c_char;
    }

    /// `mode_t` on Linux.
    #[allow(non_camel_case_types)]
    pub(super) type libc_mode_t = u32;
}

/// The last libpmem error message of this thread.
pub fn errormsg() -> String {
    // SAFETY: pmem_errormsg has no preconditions and returns a pointer to a thread-local,
    // NUL-terminated buffer that stays valid until the next libpmem call on this thread;
    // it is copied before returning.
    unsafe {
        let p = raw::pmem_errormsg();
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Checks that the loaded libpmem is compatible with version 1.1; `Err` carries its message.
pub fn check_version() -> Result<(), String> {
    // SAFETY: no preconditions; the result is NULL or a NUL-terminated static/thread-local
    // string, copied immediately.
    unsafe {
        let p = raw::pmem_check_version(PMEM_MAJOR_VERSION, PMEM_MINOR_VERSION);
        if p.is_null() {
            Ok(())
        } else {
            Err(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

/// A whole existing file mapped with `pmem_map_file`, unmapped with `pmem_unmap` on drop (the
/// file itself is left alone).
#[derive(Debug)]
pub struct PmemFile {
    addr: *mut u8,
    len: usize,
    is_pmem: bool,
}

impl PmemFile {
    /// Maps all of the existing file `path` (`pmem_map_file` with no flags and length 0).
    pub fn open(path: &Path) -> Result<PmemFile, String> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let mut mapped = 0usize;
        let mut is_pmem: c_int = 0;
        // SAFETY: `c` is a valid NUL-terminated path; both out-pointers point to live locals.
        let p = unsafe { raw::pmem_map_file(c.as_ptr(), 0, 0, 0, &mut mapped, &mut is_pmem) };
        if p.is_null() {
            return Err(format!("pmem_map_file({}): {}", path.display(), errormsg()));
        }
        Ok(PmemFile {
            addr: p.cast(),
            len: mapped,
            is_pmem: is_pmem != 0,
        })
    }

    /// Base address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a successful map).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What `pmem_map_file` reported (true on /dev/shm only with `PMEM_IS_PMEM_FORCE=1`).
    pub fn is_pmem(&self) -> bool {
        self.is_pmem
    }
}

impl Drop for PmemFile {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is exactly the mapping pmem_map_file returned, owned by
        // this value; no pointer into it outlives the value (users are bound by that).
        unsafe { raw::pmem_unmap(self.addr.cast(), self.len) };
    }
}

/// `pmem_is_pmem` for a range.
///
/// # Safety
/// The range must be mapped in this process.
pub unsafe fn is_pmem(addr: *const u8, len: usize) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { raw::pmem_is_pmem(addr.cast(), len) != 0 }
}

/// `pmem_persist`: flush every line of the range, then drain.
///
/// # Safety
/// The range must be mapped in this process.
#[inline]
pub unsafe fn persist(addr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { raw::pmem_persist(addr.cast(), len) }
}

/// `pmem_flush`: flush without the final fence.
///
/// # Safety
/// The range must be mapped in this process.
#[inline]
pub unsafe fn flush(addr: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { raw::pmem_flush(addr.cast(), len) }
}

/// `pmem_drain`: the store fence that completes earlier flushes.
#[inline]
pub fn drain() {
    // SAFETY: pmem_drain takes no arguments and only issues a fence.
    unsafe { raw::pmem_drain() }
}

/// `pmem_memcpy_persist`.
///
/// # Safety
/// `src` valid for reads and `dst` for writes of `len` bytes, not overlapping; `dst` mapped.
#[inline]
pub unsafe fn memcpy_persist(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { raw::pmem_memcpy_persist(dst.cast(), src.cast(), len) };
}

/// `pmem_memset_persist`.
///
/// # Safety
/// `dst` valid for writes of `len` bytes and mapped.
#[inline]
pub unsafe fn memset_persist(dst: *mut u8, byte: u8, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { raw::pmem_memset_persist(dst.cast(), c_int::from(byte), len) };
}
