//! A per-operation timer: the time-stamp counter on x86-64 (fenced so the timed instructions
//! cannot drift out of the window), `Instant` elsewhere.
//!
//! Timing each operation separately lets the caller leave the preparation of the operation
//! (dirtying the lines a persist will write back) outside the measurement, and lets it
//! discard interrupted samples. The cost of an empty timed window is measured by
//! [`Timer::overhead_ticks`] and subtracted by the measurement loop, identically for every
//! peer.

use std::time::{Duration, Instant};

/// Converts ticks to nanoseconds and measures the timer's own cost.
#[derive(Clone, Copy, Debug)]
pub struct Timer {
    ns_per_tick: f64,
    overhead: u64,
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::{__rdtscp, _mm_lfence, _rdtsc};

    /// Start of a timed window: earlier instructions finish first, later ones start after.
    #[inline(always)]
    pub(crate) fn start() -> u64 {
        // SAFETY: lfence and rdtsc have no preconditions on x86-64 (SSE2 baseline, TSC
        // available on every x86-64 CPU).
        unsafe {
            _mm_lfence();
            let t = _rdtsc();
            _mm_lfence();
            t
        }
    }

    /// End of a timed window: rdtscp waits for earlier instructions, lfence keeps later ones
    /// out.
    #[inline(always)]
    pub(crate) fn stop() -> u64 {
        let mut aux = 0u32;
        // SAFETY: rdtscp is present on every CPU this benchmark runs on (checked by
        // `Timer::calibrate`, which falls back otherwise); lfence has no preconditions.
        unsafe {
            let t = __rdtscp(&mut aux);
            _mm_lfence();
            t
        }
    }

    pub(crate) fn usable() -> bool {
        std::arch::is_x86_feature_detected!("sse2") && has_rdtscp()
    }

    fn has_rdtscp() -> bool {
        // CPUID 0x8000_0001 EDX bit 27: RDTSCP.
        let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
        max >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    fn epoch() -> Instant {
        static E: OnceLock<Instant> = OnceLock::new();
        *E.get_or_init(Instant::now)
    }

    #[inline(always)]
    pub(crate) fn start() -> u64 {
        epoch().elapsed().as_nanos() as u64
    }

    #[inline(always)]
    pub(crate) fn stop() -> u64 {
        epoch().elapsed().as_nanos() as u64
    }

    pub(crate) fn usable() -> bool {
        true
    }
}

/// Reads the counter at the start of a timed window.
#[inline(always)]
pub fn start() -> u64 {
    imp::start()
}

/// Reads the counter at the end of a timed window.
#[inline(always)]
pub fn stop() -> u64 {
    imp::stop()
}

impl Timer {
    /// Calibrates the counter against the monotonic clock (about `window` long) and measures
    /// the median cost of an empty timed window.
    pub fn calibrate(window: Duration) -> Timer {
        assert!(
            imp::usable(),
            "no usable cycle counter (rdtscp) on this CPU"
        );
        let t0 = Instant::now();
        let c0 = start();
        while t0.elapsed() < window {
            std::hint::spin_loop();
        }
        let c1 = stop();
        let el = t0.elapsed();
        let ticks = c1.saturating_sub(c0).max(1);
        let ns_per_tick = el.as_nanos() as f64 / ticks as f64;
        let mut empty: Vec<u64> = (0..20_000)
            .map(|_| {
                let a = start();
                let b = stop();
                b.saturating_sub(a)
            })
            .collect();
        empty.sort_unstable();
        Timer {
            ns_per_tick,
            overhead: empty[empty.len() / 2],
        }
    }

    /// Nanoseconds per counter tick.
    pub fn ns_per_tick(&self) -> f64 {
        self.ns_per_tick
    }

    /// Counter frequency in GHz.
    pub fn ghz(&self) -> f64 {
        1.0 / self.ns_per_tick
    }

    /// Median ticks of an empty timed window.
    pub fn overhead_ticks(&self) -> u64 {
        self.overhead
    }

    /// Ticks of a measured window minus the empty-window cost (never below zero).
    #[inline]
    pub fn net(&self, ticks: u64) -> u64 {
        ticks.saturating_sub(self.overhead)
    }

    /// Ticks to nanoseconds.
    pub fn to_ns(&self, ticks: f64) -> f64 {
        ticks * self.ns_per_tick
    }

    /// Ticks to a `Duration` (for criterion's `iter_custom`).
    pub fn to_duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos((ticks as f64 * self.ns_per_tick).round() as u64)
    }
}
