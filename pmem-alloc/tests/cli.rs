//! The `pma-pool` tool end to end.

use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pma-pool"))
}

#[test]
fn create_info_grow_check() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.pool");
    let out = tool()
        .args(["create", "--layout", "demo"])
        .arg(&f)
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // put some objects in it through the library
    {
        let pool = pmem_alloc::Pool::open(&f, &Default::default()).unwrap();
        for i in 0..100 {
            pool.alloc(64 + i).unwrap();
        }
        pool.alloc(100_000).unwrap();
    }
    let out = tool().arg("info").arg(&f).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(s.contains("size        8388608 bytes"), "{s}");
    assert!(s.contains("last close  clean"), "{s}");
    assert!(s.contains("large       1 allocations"), "{s}");
    let out = tool().arg("grow").arg(&f).arg("16M").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = tool().arg("check").arg(&f).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("consistent"));
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 16 << 20);
}

#[test]
fn check_fails_with_exit_1_on_a_damaged_pool_and_bad_sizes_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.pool");
    assert!(tool()
        .arg("create")
        .arg(&f)
        .arg("4M")
        .status()
        .unwrap()
        .success());
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[4096 + 20] ^= 0xff; // zone header
    std::fs::write(&f, &bytes).unwrap();
    let out = tool().arg("check").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT consistent"));
    let out = tool()
        .arg("create")
        .arg(d.path().join("x"))
        .arg("lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
    let out = tool()
        .arg("info")
        .arg(d.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}
