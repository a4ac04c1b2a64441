//! The OS layer: every system call and sysfs probe of the crate lives here.
//!
//! Contract of this module (the rest of the crate relies on it):
//! - functions return `io::Result` built from `errno`; they never panic on OS failures;
//! - addresses passed to [`munmap`], [`msync`] and [`mmap_fixed`] must be page aligned and lie in a
//!   mapping this process owns (callers state this in their `SAFETY` comments);
//! - nothing here allocates on the persistent heap or touches its data.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `MAP_SHARED_VALIDATE` (Linux 4.15+); spelled out because some libc versions lack it.
pub(crate) const MAP_SHARED_VALIDATE: libc::c_int = 0x03;
/// `MAP_SYNC` (Linux 4.15+, x86-64/arm64/ppc64 value).
pub(crate) const MAP_SYNC: libc::c_int = 0x80000;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps <= 0 {
        4096
    } else {
        ps as usize
    }
}

/// Opens `path` with raw `open(2)` flags (`O_CLOEXEC` is always added).
pub(crate) fn open(path: &Path, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; open has no other preconditions.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fstat(2)`.
pub(crate) fn fstat(file: &File) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size; the fd is valid while `file` lives.
    cvt(unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// `posix_fallocate(3)`: reserves `len` bytes from offset 0 so later page faults cannot hit ENOSPC
/// (which would be a SIGBUS on a shared mapping).
pub(crate) fn fallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // SAFETY: the fd is valid while `file` lives; posix_fallocate has no memory preconditions.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Some file systems do not support fallocate: fall back to ftruncate (sparse file).
        libc::EOPNOTSUPP | libc::EINVAL => ftruncate(file, len as u64),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `posix_fallocate(3)` of `off..off+len` only (growth: earlier holes stay holes).
pub(crate) fn fallocate_range(file: &File, off: u64, len: u64) -> io::Result<()> {
    let (o, l) = match (libc::off_t::try_from(off), libc::off_t::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "size too large",
            ))
        }
    };
    // SAFETY: the fd is valid while `file` lives.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), o, l) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => ftruncate(file, off + len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
    // SAFETY: the fd is valid while `file` lives.
    cvt(unsafe { libc::ftruncate(file.as_raw_fd(), len) })?;
    Ok(())
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file description holds the lock.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: the fd is valid while `file` lives.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Reserves `len` bytes of address space (no access) so a mapping can be placed at an aligned
/// address inside it.
pub(crate) fn reserve(len: usize) -> io::Result<*mut u8> {
    anon(len, libc::PROT_NONE)
}

/// A private anonymous mapping at a kernel-chosen address, without swap accounting.
fn anon(len: usize, prot: libc::c_int) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping at a kernel-chosen address has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Maps `len` bytes at exactly `addr` (`MAP_FIXED`), replacing what was there.
///
/// `fd = None` maps anonymous shared memory.
///
/// # Safety
/// `addr..addr+len` must be page aligned and lie inside an address-space reservation owned by
/// the caller (from [`reserve`]); anything previously mapped there is destroyed. When the call
/// fails the range may already be unmapped (the kernel unmaps before the filesystem can
/// refuse), and another thread may map there at once: the caller must give the range up and
/// never unmap or map it again.
pub(crate) unsafe fn mmap_fixed(
    addr: *mut u8,
    len: usize,
    fd: Option<&File>,
    flags: libc::c_int,
    offset: u64,
) -> io::Result<*mut u8> {
    let (fd, flags) = match fd {
        Some(f) => (f.as_raw_fd(), flags),
        None => (-1, flags | libc::MAP_ANONYMOUS),
    };
    // SAFETY: the caller guarantees the range is a reservation it owns, so MAP_FIXED only
    // replaces memory nobody else references.
    let p = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// Whether the file's filesystem accepts `MAP_SYNC` mappings, probed with a one-page mapping at
/// an address the kernel chooses (then unmapped again).
///
/// The probe exists so that [`mmap_fixed`] is never *tried* with `MAP_SYNC`: since Linux 6.x a
/// `MAP_FIXED` call that the filesystem refuses (ext4 or xfs without DAX return `EOPNOTSUPP`
/// from their mmap handler) has already unmapped its target range, and another thread's mmap
/// can take that hole before a retry maps the file there again; the retry then replaces the
/// other thread's memory.
pub(crate) fn map_sync_supported(file: &File) -> io::Result<bool> {
    let len = page_size();
    // SAFETY: a new shared mapping at a kernel-chosen address replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            MAP_SHARED_VALIDATE | MAP_SYNC,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(false),
            _ => Err(e),
        };
    }
    // SAFETY: the probe mapping was just made by this function and nothing refers to it.
    let _ = unsafe { libc::munmap(p, len) };
    Ok(true)
}

/// `munmap(2)`.
///
/// # Safety
/// The range must be a mapping (or part of one) owned by the caller, page aligned, and no live
/// reference may point into it.
pub(crate) unsafe fn munmap(addr: *mut u8, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: forwarded from the caller's contract.
    cvt(unsafe { libc::munmap(addr.cast(), len) })?;
    Ok(())
}

/// `msync(MS_SYNC)` of the pages covering `addr..addr+len` (the start is rounded down to a page).
///
/// # Safety
/// The range must lie inside a mapping of this process.
pub(crate) unsafe fn msync(addr: *const u8, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let ps = page_size();
    let start = addr as usize & !(ps - 1);
    let end = addr as usize + len;
    // SAFETY: forwarded from the caller's contract; rounding down stays within the same mapping
    // because mappings are page aligned.
    cvt(unsafe { libc::msync(start as *mut libc::c_void, end - start, libc::MS_SYNC) })?;
    Ok(())
}

/// `madvise(2)` with `advice`; failures are returned, never fatal.
///
/// # Safety
/// The range must be page aligned and inside a mapping of this process; with destructive advice
/// (`MADV_DONTNEED`, `MADV_REMOVE`) no live data may be in it.
#[allow(dead_code)]
pub(crate) unsafe fn madvise(addr: *mut u8, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: forwarded from the caller's contract.
    cvt(unsafe { libc::madvise(addr.cast(), len, advice) })?;
    Ok(())
}

/// Reads a small sysfs attribute, trimmed. `None` if it does not exist or cannot be read.
pub(crate) fn read_sysfs(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Size in bytes of a device-DAX character device, from `/sys/dev/char/MAJ:MIN/size`.
pub(crate) fn devdax_size(st: &libc::stat) -> io::Result<u64> {
    let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let p = format!("/sys/dev/char/{maj}:{min}/size");
    read_sysfs(Path::new(&p))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("cannot read {p}")))
}

/// Alignment required by a device-DAX character device (`/sys/dev/char/MAJ:MIN/align`), if any.
pub(crate) fn devdax_align(st: &libc::stat) -> Option<usize> {
    let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    read_sysfs(Path::new(&format!("/sys/dev/char/{maj}:{min}/align")))?
        .parse()
        .ok()
}

/// Whether a character device is a device-DAX instance (its sysfs `subsystem` is `dax`).
pub(crate) fn is_devdax(st: &libc::stat) -> bool {
    let (maj, min) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let link = format!("/sys/dev/char/{maj}:{min}/subsystem");
    std::fs::read_link(&link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "dax"))
        .unwrap_or(false)
}

/// True when every NVDIMM region of the platform reports `persistence_domain = cpu_cache` (eADR):
/// CPU caches are then inside the power-fail protected domain and cache flushes are unnecessary.
/// False when there are no regions or any region reports something else.
pub(crate) fn platform_has_eadr() -> bool {
    eadr_in(Path::new("/sys/bus/nd/devices"))
}

/// [`platform_has_eadr`] over a given `devices` directory (tests use a fake tree).
pub(crate) fn eadr_in(devices: &Path) -> bool {
    let Ok(dir) = std::fs::read_dir(devices) else {
        return false;
    };
    let mut any = false;
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("region") {
            continue;
        }
        match read_sysfs(&entry.path().join("persistence_domain")) {
            Some(d) if d == "cpu_cache" => any = true,
            _ => return false,
        }
    }
    any
}

/// Private anonymous memory, reserved without swap accounting and faulted in lazily; copied on
/// write across fork (so a child's metadata never aliases the parent's).
pub(crate) fn anon_private(len: usize) -> io::Result<*mut u8> {
    anon(len, libc::PROT_READ | libc::PROT_WRITE)
}

/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: returns the blocks of `off..off+len` to the file system;
/// the range reads back as zeros.
///
/// # Safety
/// No live data may be in the range (its contents are discarded).
pub(crate) unsafe fn punch_hole(fd: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate has no memory-safety preconditions; the caller vouches for the data.
    cvt(unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(domains: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, dom) in domains {
            let r = d.path().join(name);
            std::fs::create_dir(&r).unwrap();
            if let Some(dom) = dom {
                std::fs::write(r.join("persistence_domain"), format!("{dom}\n")).unwrap();
            }
        }
        d
    }

    #[test]
    fn eadr_needs_every_region_in_the_cpu_cache_domain() {
        assert!(eadr_in(
            tree(&[
                ("region0", Some("cpu_cache")),
                ("region1", Some("cpu_cache"))
            ])
            .path()
        ));
        assert!(!eadr_in(
            tree(&[
                ("region0", Some("cpu_cache")),
                ("region1", Some("memory_controller"))
            ])
            .path()
        ));
        assert!(!eadr_in(tree(&[("region0", None)]).path()));
        assert!(
            !eadr_in(tree(&[("namespace0.0", Some("cpu_cache"))]).path()),
            "only regions count"
        );
        assert!(!eadr_in(tree(&[]).path()), "no regions: no eADR");
        assert!(!eadr_in(Path::new("/nonexistent/sysfs")));
    }
}
