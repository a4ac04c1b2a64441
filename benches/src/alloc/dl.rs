//! `dlopen` with `RTLD_NOW | RTLD_LOCAL`: the loaded library's symbols do not join the global
//! namespace, so a library exporting `malloc` does not replace the process's allocator.

use std::ffi::{c_void, CStr, CString};

/// A loaded shared library. Never closed: allocators keep thread-local state and destructors
/// that must outlive every block they handed out.
#[derive(Debug)]
pub struct Lib {
    handle: *mut c_void,
    name: String,
}

// SAFETY: a dlopen handle is a process-wide token; dlsym is thread-safe.
unsafe impl Send for Lib {}
// SAFETY: as above.
unsafe impl Sync for Lib {}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call on
    // this thread; it is copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Lib {
    /// Loads `name` (a soname such as `libjemalloc.so.2`) with `RTLD_NOW | RTLD_LOCAL`.
    pub fn open(name: &str) -> Result<Lib, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the library's constructors run here (they are the peers'
        // own initialisation).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!("dlopen {name}: {}", dl_error()));
        }
        Ok(Lib {
            handle,
            name: name.into(),
        })
    }

    /// The address of symbol `sym` as a function pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be an `extern "C"` function pointer type matching the symbol's real signature.
    pub unsafe fn func<F: Copy>(&self, sym: &str) -> Result<F, String> {
        assert_eq!(
            std::mem::size_of::<F>(),
            std::mem::size_of::<*mut c_void>(),
            "F must be a function pointer"
        );
        let c = CString::new(sym).map_err(|e| e.to_string())?;
        // SAFETY: the handle is live (never closed) and `c` is a valid C string.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        if p.is_null() {
            return Err(format!("{}: no symbol {sym}: {}", self.name, dl_error()));
        }
        // SAFETY: `F` is a pointer-sized function pointer type matching the symbol (caller's
        // contract); `p` is non-null.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }
}
