//! The flush-path override works, so that running the suite once per `PMEM_ALLOC_FLUSH` value
//! (as the project's test script does) really exercises each path.

use pmem_alloc::flush::{CpuFeatures, FlushMethod, FLUSH_ENV};
use pmem_alloc::map::{MapKind, MapOptions, Mapping, FORCE_PMEM_ENV};
use pmem_alloc::persist::Persist;

fn env_method() -> Option<FlushMethod> {
    std::env::var(FLUSH_ENV).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_override_selects_the_method() {
    let f = CpuFeatures::get();
    match env_method() {
        Some(m) if f.supports(m) => assert_eq!(FlushMethod::detected(), m),
        Some(_) => assert_eq!(FlushMethod::detected(), f.best_method()),
        None => assert_eq!(FlushMethod::detected(), f.best_method()),
    }
    eprintln!("flush path under test: {}", FlushMethod::detected());
}

#[test]
fn a_page_cache_mapping_follows_its_kind_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let m = Mapping::create(&d.path().join("p"), 1 << 20, &MapOptions::new()).unwrap();
    if m.kind() != MapKind::PageCache {
        return; // a DAX file system: covered by the guest tests
    }
    let forced = std::env::var(FORCE_PMEM_ENV)
        .map(|v| v == "1")
        .unwrap_or(false);
    let got = m.persister().method();
    let want = match FlushMethod::detected() {
        FlushMethod::None => FlushMethod::None,
        m if forced => m,
        _ => FlushMethod::Msync,
    };
    assert_eq!(got, want);
    assert_eq!(m.persister().is_durable(), want != FlushMethod::None);
    // and whatever the path, data written and persisted reads back after a reopen
    m.write_at(4095, b"edge").unwrap();
    m.persist_range(4095, 4).unwrap();
    drop(m);
    let m = Mapping::open(&d.path().join("p"), &MapOptions::new()).unwrap();
    let mut b = [0u8; 4];
    m.read_at(4095, &mut b).unwrap();
    assert_eq!(&b, b"edge");
}

#[test]
fn anonymous_mappings_never_flush() {
    let m = Mapping::anonymous(1 << 16).unwrap();
    assert_eq!(m.persister().method(), FlushMethod::None);
    assert!(!m.persister().is_durable());
}

/// Under msync, a drain syncs the ranges flushed since the last one: overlapping or touching
/// pages in one call, ranges of one mapping (`Hardware::within`) in one call, other ranges one
/// call each; nothing is synced before the drain, and everything after it.
#[test]
fn msync_flushes_are_synced_at_the_drain_and_merged() {
    use pmem_alloc::flush::FlushMethod;
    use pmem_alloc::map::{MapOptions, Mapping};
    use pmem_alloc::persist::{msync_calls, msync_errors, Hardware, Persist};
    let dir = tempfile::tempdir().unwrap();
    let map = Mapping::create(&dir.path().join("m"), 4 << 20, &MapOptions::new()).unwrap();
    let base = map.as_ptr();
    let page = 4096;
    let errors = msync_errors();
    let count = |p: &Hardware, offsets: &[usize]| {
        let before = msync_calls();
        for &o in offsets {
            map.write_at(o, &[7; 100]).unwrap();
            // SAFETY: inside the 4 MiB mapping.
            unsafe { p.flush(base.add(o), 100) };
        }
        let flushed = msync_calls() - before;
        p.drain();
        (flushed, msync_calls() - before)
    };
    let plain = Hardware::new(FlushMethod::Msync);
    // same page twice, then the next page: one range
    assert_eq!(count(&plain, &[0, 200, page]), (0, 1));
    // three pages far apart without a span: one msync each
    assert_eq!(count(&plain, &[0, 1 << 20, 3 << 20]), (0, 3));
    // with the mapping's span: one msync for all
    let spanned = plain.within(base, map.len());
    assert_eq!(count(&spanned, &[0, 1 << 20, 3 << 20]), (0, 1));
    // more distinct ranges than the pending slots: the ninth syncs the first eight
    let many: Vec<usize> = (0..9).map(|i| i * 2 * page).collect();
    assert_eq!(count(&plain, &many), (8, 9));
    // a drain with nothing pending makes no call
    assert_eq!(count(&plain, &[]), (0, 0));
    assert_eq!(msync_errors(), errors);
}
