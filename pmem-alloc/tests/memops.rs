//! `memcpy_persist` / `memset_persist` against a plain copy, for every alignment of head and
//! tail, every flush method this CPU supports, and several non-temporal thresholds.

use pmem_alloc::flush::{CpuFeatures, FlushMethod};
use pmem_alloc::persist::{self, Hardware, NoPersist, Persist};
use pmem_alloc::sim::SimMedia;
use proptest::prelude::*;

fn policies() -> Vec<Box<dyn Persist>> {
    let f = CpuFeatures::get();
    let mut v: Vec<Box<dyn Persist>> = vec![Box::new(NoPersist)];
    for m in FlushMethod::ALL {
        if f.supports(m) {
            v.push(Box::new(Hardware::new(m)));
        }
    }
    v
}

/// Page-aligned scratch memory (msync needs a real mapping, a Vec would do for the rest).
fn scratch(len: usize) -> pmem_alloc::Mapping {
    pmem_alloc::Mapping::anonymous(len).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memcpy_persist_equals_plain_copy(
        dst_off in 0usize..130,
        src_off in 0usize..64,
        len in prop_oneof![0usize..300, 0usize..20_000],
        threshold in prop_oneof![Just(0usize), Just(256), Just(usize::MAX)],
        seed in any::<u8>(),
    ) {
        persist::set_movnt_threshold(threshold);
        let src: Vec<u8> = (0..len + src_off).map(|i| (i as u8).wrapping_mul(seed | 1) ^ 0x3C).collect();
        for p in policies() {
            let m = scratch(len + 256);
            m.write_at(0, &vec![0xEE; m.len()]).unwrap();
            // SAFETY: `dst_off + len <= m.len()`; source and destination do not overlap.
            unsafe { p.memcpy_persist(m.as_ptr().add(dst_off), src.as_ptr().add(src_off), len) };
            let mut out = vec![0u8; m.len()];
            m.read_at(0, &mut out).unwrap();
            prop_assert_eq!(&out[dst_off..dst_off + len], &src[src_off..src_off + len], "{:?}", p);
            prop_assert!(out[..dst_off].iter().all(|&b| b == 0xEE), "head clobbered by {:?}", p);
            prop_assert!(out[dst_off + len..].iter().all(|&b| b == 0xEE), "tail clobbered by {:?}", p);
        }
        persist::set_movnt_threshold(persist::DEFAULT_MOVNT_THRESHOLD);
    }

    #[test]
    fn memset_persist_equals_plain_fill(
        dst_off in 0usize..130,
        len in prop_oneof![0usize..300, 0usize..20_000],
        byte in any::<u8>(),
        threshold in prop_oneof![Just(0usize), Just(256), Just(usize::MAX)],
    ) {
        persist::set_movnt_threshold(threshold);
        for p in policies() {
            let m = scratch(len + 256);
            m.write_at(0, &vec![!byte; m.len()]).unwrap();
            // SAFETY: in bounds of the mapping.
            unsafe { p.memset_persist(m.as_ptr().add(dst_off), byte, len) };
            let mut out = vec![0u8; m.len()];
            m.read_at(0, &mut out).unwrap();
            prop_assert!(out[dst_off..dst_off + len].iter().all(|&b| b == byte));
            prop_assert!(out[..dst_off].iter().all(|&b| b == !byte));
            prop_assert!(out[dst_off + len..].iter().all(|&b| b == !byte));
        }
        persist::set_movnt_threshold(persist::DEFAULT_MOVNT_THRESHOLD);
    }

    /// Under the simulator, a completed memcpy_persist is durable in full, whatever the
    /// alignment: every touched line was flushed.
    #[test]
    fn memcpy_persist_is_durable_under_the_simulator(
        dst_off in 0usize..200,
        len in 0usize..3000,
    ) {
        let media = SimMedia::new_strict(4096);
        let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        // SAFETY: `dst_off + len < 4096`, inside the simulated region.
        unsafe { media.memcpy_persist(media.base().add(dst_off), src.as_ptr(), len) };
        let img = media.durable_image();
        prop_assert_eq!(&img[dst_off..dst_off + len], &src[..]);
    }
}
