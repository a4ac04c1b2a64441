//! A small deterministic generator (SplitMix64) so that every peer sees the same sequence of
//! sizes and slots for a given seed.

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A size between `lo` and `hi` (powers of two), log-uniform: each power-of-two band
    /// `[s, 2s)` is equally likely, uniform inside a band, rounded to 8 bytes.
    #[inline]
    pub fn size_log(&mut self, lo: usize, hi: usize) -> usize {
        let bands = (hi / lo).trailing_zeros() as u64; // lo, 2lo, .., hi/2 start bands
        let b = lo << self.below(bands.max(1));
        let s = b + self.below(b as u64) as usize;
        (s.max(lo).min(hi) + 7) & !7
    }
}
