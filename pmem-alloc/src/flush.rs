//! Instructions only: cache-line flushes, store fences and non-temporal copies.
//!
//! The method is chosen once per process ([`FlushMethod::detected`]): `clwb`, else `clflushopt`,
//! else `clflush`; on a platform whose persistence domain includes the CPU caches (eADR) the
//! flushes are skipped and only the fence remains. `PMEM_ALLOC_FLUSH=clwb|clflushopt|clflush|
//! fence|msync|none` overrides the choice so that every path can be tested on one machine.
//!
//! Nothing in this module knows about mappings or policies: [`crate::persist`] decides *whether*
//! to flush, this module knows *how*.

use std::sync::OnceLock;

/// Flush granularity: the size of a CPU cache line, the unit in which data reaches the media.
pub const FLUSH_ALIGN: usize = 64;

/// Padding that keeps two hot fields on different cache lines *pairs* (x86-64 prefetches lines
/// in pairs, so false sharing needs 128 bytes). Deliberately separate from [`FLUSH_ALIGN`].
pub const CACHE_PAD: usize = 128;

/// Environment variable that overrides the detected flush method.
pub const FLUSH_ENV: &str = "PMEM_ALLOC_FLUSH";

/// How cache lines are written back to the media.
///
/// # Examples
/// ```
/// use pmem_alloc::flush::FlushMethod;
/// assert_eq!("clwb".parse::<FlushMethod>(), Ok(FlushMethod::Clwb));
/// assert!("bogus".parse::<FlushMethod>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlushMethod {
    /// `clwb` (keeps the line valid in the cache) + `sfence`.
    Clwb,
    /// `clflushopt` (invalidates, weakly ordered) + `sfence`.
    ClflushOpt,
    /// `clflush` (invalidates; ordered with other stores and flushes, so `drain` needs no fence
    /// except after non-temporal stores, which the copy and fill paths fence themselves).
    Clflush,
    /// eADR: caches are persistent, so no flush; only the `sfence` that orders stores.
    FenceOnly,
    /// `msync(MS_SYNC)` of the touched pages (page-cache mappings, non-x86 platforms).
    Msync,
    /// Nothing at all (volatile heaps, benchmarks). Data is *not* made durable.
    None,
}

/// Error for an unknown flush method name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown flush method {0:?} (expected clwb, clflushopt, clflush, fence, msync or none)")]
pub struct UnknownFlushMethod(pub String);

impl std::str::FromStr for FlushMethod {
    type Err = UnknownFlushMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "clwb" => Ok(Self::Clwb),
            "clflushopt" => Ok(Self::ClflushOpt),
            "clflush" => Ok(Self::Clflush),
            "fence" | "eadr" => Ok(Self::FenceOnly),
            "msync" => Ok(Self::Msync),
            "none" => Ok(Self::None),
            _ => Err(UnknownFlushMethod(s.to_owned())),
        }
    }
}

impl std::fmt::Display for FlushMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Clwb => "clwb",
            Self::ClflushOpt => "clflushopt",
            Self::Clflush => "clflush",
            Self::FenceOnly => "fence",
            Self::Msync => "msync",
            Self::None => "none",
        })
    }
}

/// CPU and platform features relevant to persistence, detected once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// `clflush` is available.
    pub clflush: bool,
    /// `clflushopt` is available.
    pub clflushopt: bool,
    /// `clwb` is available.
    pub clwb: bool,
    /// AVX2 (32-byte non-temporal stores).
    pub avx2: bool,
    /// AVX-512F (64-byte non-temporal stores).
    pub avx512f: bool,
    /// The platform's NVDIMM regions report `persistence_domain = cpu_cache` (eADR).
    pub eadr: bool,
}

impl CpuFeatures {
    /// The features of this CPU and platform (detected on first call, then cached).
    pub fn get() -> &'static CpuFeatures {
        static F: OnceLock<CpuFeatures> = OnceLock::new();
        F.get_or_init(detect)
    }

    /// The best flush method these features allow, ignoring any override.
    pub fn best_method(&self) -> FlushMethod {
        if self.eadr {
            FlushMethod::FenceOnly
        } else if self.clwb {
            FlushMethod::Clwb
        } else if self.clflushopt {
            FlushMethod::ClflushOpt
        } else if self.clflush {
            FlushMethod::Clflush
        } else {
            FlushMethod::Msync
        }
    }

    /// Whether `m` can run on this CPU (the `msync`, `fence` and `none` methods always can).
    pub fn supports(&self, m: FlushMethod) -> bool {
        match m {
            FlushMethod::Clwb => self.clwb,
            FlushMethod::ClflushOpt => self.clflushopt,
            FlushMethod::Clflush => self.clflush,
            FlushMethod::FenceOnly | FlushMethod::Msync | FlushMethod::None => true,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 1, EDX bit 19: CLFSH. Leaf 7 subleaf 0, EBX bit 23: CLFLUSHOPT, bit 24: CLWB.
    let l1 = __cpuid_count(1, 0);
    let max = __cpuid_count(0, 0).eax;
    let l7 = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
    CpuFeatures {
        clflush: l1.edx & (1 << 19) != 0,
        clflushopt: l7 & (1 << 23) != 0,
        clwb: l7 & (1 << 24) != 0,
        avx2: std::arch::is_x86_feature_detected!("avx2"),
        avx512f: std::arch::is_x86_feature_detected!("avx512f"),
        eadr: crate::sys::platform_has_eadr(),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures {
        clflush: false,
        clflushopt: false,
        clwb: false,
        avx2: false,
        avx512f: false,
        eadr: false,
    }
}

impl FlushMethod {
    /// Every method, strongest write-back first.
    pub const ALL: [FlushMethod; 6] = [
        FlushMethod::Clwb,
        FlushMethod::ClflushOpt,
        FlushMethod::Clflush,
        FlushMethod::FenceOnly,
        FlushMethod::Msync,
        FlushMethod::None,
    ];

    /// The process-wide method: [`FLUSH_ENV`] if set to a method this CPU supports, otherwise
    /// the best detected one. An invalid override is reported once on stderr and ignored.
    ///
    /// # Examples
    /// ```
    /// let m = pmem_alloc::flush::FlushMethod::detected();
    /// assert!(pmem_alloc::flush::CpuFeatures::get().supports(m));
    /// ```
    pub fn detected() -> FlushMethod {
        static M: OnceLock<FlushMethod> = OnceLock::new();
        *M.get_or_init(|| {
            let f = CpuFeatures::get();
            match std::env::var(FLUSH_ENV) {
                Ok(v) if !v.is_empty() => match v.parse::<FlushMethod>() {
                    Ok(m) if f.supports(m) => m,
                    Ok(m) => {
                        eprintln!("pmem-alloc: {FLUSH_ENV}={m} is not supported by this CPU; using {}", f.best_method());
                        f.best_method()
                    }
                    Err(e) => {
                        eprintln!("pmem-alloc: {e}; using {}", f.best_method());
                        f.best_method()
                    }
                },
                _ => f.best_method(),
            }
        })
    }

    /// Whether this method writes lines back with a CPU instruction.
    pub fn is_cpu_flush(self) -> bool {
        matches!(self, Self::Clwb | Self::ClflushOpt | Self::Clflush)
    }
}

/// Store fence: orders earlier flushes and non-temporal stores before later stores.
#[inline(always)]
pub fn sfence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions; SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// Writes back every cache line that overlaps `addr..addr+len` with `method`'s instruction.
/// For [`FlushMethod::FenceOnly`], [`FlushMethod::Msync`] and [`FlushMethod::None`] it does
/// nothing (msync is the policy layer's job: it needs to know the mapping).
///
/// # Safety
/// The whole range must be mapped in this process, and `method` must be supported by the CPU
/// (see [`CpuFeatures::supports`]); otherwise the instruction faults.
#[inline]
pub unsafe fn flush_lines(method: FlushMethod, addr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    let mut p = addr as usize & !(FLUSH_ALIGN - 1);
    let end = addr as usize + len;
    match method {
        FlushMethod::Clwb => {
            while p < end {
                // SAFETY: the caller guarantees the line is mapped and clwb is supported.
                unsafe { clwb(p as *const u8) };
                p += FLUSH_ALIGN;
            }
        }
        FlushMethod::ClflushOpt => {
            while p < end {
                // SAFETY: as above, for clflushopt.
                unsafe { clflushopt(p as *const u8) };
                p += FLUSH_ALIGN;
            }
        }
        FlushMethod::Clflush => {
            while p < end {
                // SAFETY: as above, for clflush.
                unsafe { clflush(p as *const u8) };
                p += FLUSH_ALIGN;
            }
        }
        FlushMethod::FenceOnly | FlushMethod::Msync | FlushMethod::None => {}
    }
}

/// `clwb` of one line.
///
/// # Safety
/// `p` must point into mapped memory and the CPU must support clwb.
#[inline(always)]
pub unsafe fn clwb(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller; clwb only writes back a cache line, it does not
    // modify memory, so `readonly` holds from the program's point of view.
    unsafe {
        std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `clflushopt` of one line.
///
/// # Safety
/// `p` must point into mapped memory and the CPU must support clflushopt.
#[inline(always)]
pub unsafe fn clflushopt(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller; the instruction does not change memory contents.
    unsafe {
        std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `clflush` of one line.
///
/// # Safety
/// `p` must point into mapped memory.
#[inline(always)]
pub unsafe fn clflush(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller; clflush is part of the x86-64 baseline (SSE2).
    unsafe {
        std::arch::x86_64::_mm_clflush(p)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Copies `len` bytes with non-temporal (cache-bypassing) stores for the 64-byte-aligned body
/// of the destination. The unaligned head and tail are copied with ordinary stores and written
/// back with `method`. The caller must [`sfence`] before relying on durability.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, the two must not
/// overlap, and `method` must be supported by the CPU.
pub unsafe fn memcpy_nt(method: FlushMethod, dst: *mut u8, src: *const u8, len: usize) {
    let head = (FLUSH_ALIGN - (dst as usize & (FLUSH_ALIGN - 1))) & (FLUSH_ALIGN - 1);
    if len < head + FLUSH_ALIGN {
        // SAFETY: forwarded from the caller.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, len);
            flush_lines(method, dst, len);
        }
        return;
    }
    // SAFETY: every offset stays below `len`, for which the caller vouches.
    unsafe {
        // (empty head/tail calls are skipped: some libc memcpy/memset variants still issue a
        // masked store to the line for length 0, which costs as much as a real one)
        if head > 0 {
            std::ptr::copy_nonoverlapping(src, dst, head);
            flush_lines(method, dst, head);
        }
        let body = (len - head) & !(FLUSH_ALIGN - 1);
        nt_copy_body(dst.add(head), src.add(head), body);
        let done = head + body;
        if done < len {
            std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done);
            flush_lines(method, dst.add(done), len - done);
        }
    }
}

/// Fills `len` bytes with `byte`, non-temporal for the aligned body (see [`memcpy_nt`]).
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes and `method` supported by the CPU.
pub unsafe fn memset_nt(method: FlushMethod, dst: *mut u8, byte: u8, len: usize) {
    let head = (FLUSH_ALIGN - (dst as usize & (FLUSH_ALIGN - 1))) & (FLUSH_ALIGN - 1);
    if len < head + FLUSH_ALIGN {
        // SAFETY: forwarded from the caller.
        unsafe {
            std::ptr::write_bytes(dst, byte, len);
            flush_lines(method, dst, len);
        }
        return;
    }
    // SAFETY: every offset stays below `len`, for which the caller vouches.
    unsafe {
        if head > 0 {
            std::ptr::write_bytes(dst, byte, head);
            flush_lines(method, dst, head);
        }
        let body = (len - head) & !(FLUSH_ALIGN - 1);
        nt_set_body(dst.add(head), byte, body);
        let done = head + body;
        if done < len {
            std::ptr::write_bytes(dst.add(done), byte, len - done);
            flush_lines(method, dst.add(done), len - done);
        }
    }
}

/// Non-temporal copy of a 64-byte-aligned destination, `len` a multiple of 64.
///
/// # Safety
/// As [`memcpy_nt`]; additionally `dst` is 64-byte aligned and `len % 64 == 0`.
unsafe fn nt_copy_body(dst: *mut u8, src: *const u8, len: usize) {
    debug_assert_eq!(dst as usize % FLUSH_ALIGN, 0);
    debug_assert_eq!(len % FLUSH_ALIGN, 0);
    #[cfg(target_arch = "x86_64")]
    {
        let f = CpuFeatures::get();
        if f.avx512f {
            // SAFETY: AVX-512F was detected; the rest is forwarded from the caller.
            return unsafe { x86::copy_avx512(dst, src, len) };
        }
        if f.avx2 {
            // SAFETY: AVX2 was detected.
            return unsafe { x86::copy_avx2(dst, src, len) };
        }
        // SAFETY: SSE2 is baseline on x86-64.
        unsafe { x86::copy_sse2(dst, src, len) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded from the caller.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, len)
    }
}

/// Non-temporal fill of a 64-byte-aligned destination, `len` a multiple of 64.
///
/// # Safety
/// `dst` valid for `len` bytes of writes, 64-byte aligned, `len % 64 == 0`.
unsafe fn nt_set_body(dst: *mut u8, byte: u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let f = CpuFeatures::get();
        if f.avx512f {
            // SAFETY: AVX-512F was detected.
            return unsafe { x86::set_avx512(dst, byte, len) };
        }
        if f.avx2 {
            // SAFETY: AVX2 was detected.
            return unsafe { x86::set_avx2(dst, byte, len) };
        }
        // SAFETY: SSE2 is baseline on x86-64.
        unsafe { x86::set_sse2(dst, byte, len) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded from the caller.
    unsafe {
        std::ptr::write_bytes(dst, byte, len)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Non-temporal kernels. Every function: `dst` 64-byte aligned, `len % 64 == 0`, `src` and
    //! `dst` valid and non-overlapping for `len` bytes; the target feature must be present.
    use std::arch::x86_64::*;

    /// # Safety
    /// See the module contract; requires AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_avx512(dst: *mut u8, src: *const u8, len: usize) {
        let mut off = 0;
        // SAFETY: offsets stay below `len` (module contract); stores are to
        // 64-byte aligned addresses as _mm512_stream_si512 requires.
        unsafe {
            while off + 256 <= len {
                let a = _mm512_loadu_si512(src.add(off).cast());
                let b = _mm512_loadu_si512(src.add(off + 64).cast());
                let c = _mm512_loadu_si512(src.add(off + 128).cast());
                let d = _mm512_loadu_si512(src.add(off + 192).cast());
                _mm512_stream_si512(dst.add(off).cast(), a);
                _mm512_stream_si512(dst.add(off + 64).cast(), b);
                _mm512_stream_si512(dst.add(off + 128).cast(), c);
                _mm512_stream_si512(dst.add(off + 192).cast(), d);
                off += 256;
            }
            while off < len {
                let a = _mm512_loadu_si512(src.add(off).cast());
                _mm512_stream_si512(dst.add(off).cast(), a);
                off += 64;
            }
        }
    }

    /// # Safety
    /// See the module contract; requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2(dst: *mut u8, src: *const u8, len: usize) {
        let mut off = 0;
        // SAFETY: offsets stay below `len`; stores are 32-byte aligned.
        unsafe {
            while off < len {
                let a = _mm256_loadu_si256(src.add(off).cast());
                let b = _mm256_loadu_si256(src.add(off + 32).cast());
                _mm256_stream_si256(dst.add(off).cast(), a);
                _mm256_stream_si256(dst.add(off + 32).cast(), b);
                off += 64;
            }
        }
    }

    /// # Safety
    /// See the module contract (SSE2 is baseline).
    pub(super) unsafe fn copy_sse2(dst: *mut u8, src: *const u8, len: usize) {
        let mut off = 0;
        // SAFETY: offsets stay below `len`; stores are 16-byte aligned.
        unsafe {
            while off < len {
                for k in 0..4 {
                    let a = _mm_loadu_si128(src.add(off + 16 * k).cast());
                    _mm_stream_si128(dst.add(off + 16 * k).cast(), a);
                }
                off += 64;
            }
        }
    }

    /// # Safety
    /// See the module contract; requires AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn set_avx512(dst: *mut u8, byte: u8, len: usize) {
        let v = _mm512_set1_epi8(byte as i8);
        let mut off = 0;
        // SAFETY: offsets stay below `len`; stores are 64-byte aligned.
        unsafe {
            while off < len {
                _mm512_stream_si512(dst.add(off).cast(), v);
                off += 64;
            }
        }
    }

    /// # Safety
    /// See the module contract; requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn set_avx2(dst: *mut u8, byte: u8, len: usize) {
        let v = _mm256_set1_epi8(byte as i8);
        let mut off = 0;
        // SAFETY: offsets stay below `len`; stores are 32-byte aligned.
        unsafe {
            while off < len {
                _mm256_stream_si256(dst.add(off).cast(), v);
                _mm256_stream_si256(dst.add(off + 32).cast(), v);
                off += 64;
            }
        }
    }

    /// # Safety
    /// See the module contract (SSE2 is baseline).
    pub(super) unsafe fn set_sse2(dst: *mut u8, byte: u8, len: usize) {
        let mut off = 0;
        // SAFETY: SSE2 is baseline on x86-64; offsets stay below `len`; stores are 16-byte
        // aligned.
        unsafe {
            let v = _mm_set1_epi8(byte as i8);
            while off < len {
                for k in 0..4 {
                    _mm_stream_si128(dst.add(off + 16 * k).cast(), v);
                }
                off += 64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for m in FlushMethod::ALL {
            assert_eq!(m.to_string().parse::<FlushMethod>(), Ok(m));
        }
        assert_eq!("  CLWB ".parse::<FlushMethod>(), Ok(FlushMethod::Clwb));
        assert!("clwbx".parse::<FlushMethod>().is_err());
    }

    #[test]
    fn every_supported_instruction_runs_on_a_buffer() {
        let buf = vec![7u8; 4096 + 3];
        let f = CpuFeatures::get();
        for m in [
            FlushMethod::Clwb,
            FlushMethod::ClflushOpt,
            FlushMethod::Clflush,
        ] {
            if f.supports(m) {
                // SAFETY: the buffer is mapped and the method is supported.
                unsafe { flush_lines(m, buf.as_ptr().wrapping_add(1), buf.len() - 1) };
                sfence();
            }
        }
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn nt_kernels_match_plain_copy_for_every_alignment() {
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
        for dst_off in 0..64 {
            for len in [0, 1, 63, 64, 65, 127, 128, 255, 256, 257, 1000, 3000] {
                let mut dst = vec![0xAAu8; 4096 + 64];
                // SAFETY: the ranges are in bounds and do not overlap; clflush is baseline.
                unsafe {
                    memcpy_nt(
                        FlushMethod::Clflush,
                        dst.as_mut_ptr().add(dst_off),
                        src.as_ptr(),
                        len,
                    )
                };
                sfence();
                assert_eq!(
                    &dst[dst_off..dst_off + len],
                    &src[..len],
                    "off {dst_off} len {len}"
                );
                assert!(dst[..dst_off].iter().all(|&b| b == 0xAA));
                assert!(dst[dst_off + len..].iter().all(|&b| b == 0xAA));
                let mut d2 = vec![0x55u8; 4096 + 64];
                // SAFETY: in bounds.
                unsafe { memset_nt(FlushMethod::None, d2.as_mut_ptr().add(dst_off), 0x11, len) };
                sfence();
                assert!(d2[dst_off..dst_off + len].iter().all(|&b| b == 0x11));
                assert!(d2[..dst_off].iter().all(|&b| b == 0x55));
                assert!(d2[dst_off + len..].iter().all(|&b| b == 0x55));
            }
        }
    }
}
