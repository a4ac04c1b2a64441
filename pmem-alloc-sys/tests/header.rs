//! The checked-in header is what cbindgen generates from the code (drift fails this test).

#[test]
fn header_matches_the_code() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/src/lib.rs"))
        .generate()
        .expect("cbindgen failed")
        .write(&mut generated);
    let path = format!("{dir}/include/pmem_alloc.h");
    if std::env::var_os("PMA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == generated,
        "include/pmem_alloc.h is out of date with src/lib.rs: regenerate it with \
         `PMA_BLESS=1 cargo test -p pmem-alloc-sys --test header` and commit it"
    );
    let text = String::from_utf8(generated).unwrap();
    for f in [
        "pma_pool_create",
        "pma_malloc",
        "pma_persist",
        "pma_heap_malloc",
        "pma_strerror",
    ] {
        assert!(
            text.contains(&format!("{f}(")),
            "{f} missing from the header"
        );
    }
    assert!(!text.contains(" pmem_"), "exports must use the pma_ prefix");
}
