//! Bad input to the mapping layer gets a typed error, never a panic, and leaves nothing behind.

use pmem_alloc::map::{MapError, MapKind, MapOptions, Mapping};
use std::path::Path;
use std::process::Command;

fn opts() -> MapOptions {
    MapOptions::new()
}

#[test]
fn a_directory_is_rejected() {
    let d = tempfile::tempdir().unwrap();
    // open(O_RDWR) of a directory fails with EISDIR.
    assert!(matches!(
        Mapping::open(d.path(), &opts()),
        Err(MapError::IsDirectory { .. })
    ));
    assert!(matches!(
        Mapping::create(d.path(), 1 << 20, &opts()),
        Err(MapError::AlreadyExists { .. })
    ));
}

#[test]
fn missing_empty_and_small_files_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("missing");
    assert!(matches!(
        Mapping::open(&p, &opts()),
        Err(MapError::NotFound { .. })
    ));
    let e = d.path().join("empty");
    std::fs::write(&e, b"").unwrap();
    assert!(matches!(
        Mapping::open(&e, &opts()),
        Err(MapError::Empty { .. })
    ));
    let s = d.path().join("small");
    std::fs::write(&s, [1u8; 100]).unwrap();
    match Mapping::open(&s, &opts()) {
        Err(MapError::TooSmall { size, min, .. }) => {
            assert_eq!(size, 100);
            assert!(min >= 4096);
        }
        other => panic!("expected TooSmall, got {other:?}"),
    }
    // create refuses sizes below the minimum and leaves no file.
    let c = d.path().join("c");
    assert!(matches!(
        Mapping::create(&c, 10, &opts()),
        Err(MapError::TooSmall { .. })
    ));
    assert!(!c.exists());
    // messages name the file
    let msg = Mapping::open(&e, &opts()).unwrap_err().to_string();
    assert!(
        msg.contains("file is empty") && msg.contains("/empty"),
        "{msg}"
    );
}

#[test]
fn create_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("pool");
    let m = Mapping::create(&p, 1 << 20, &opts()).unwrap();
    m.write_at(0, b"keep").unwrap();
    m.persist_range(0, 4).unwrap();
    drop(m);
    assert!(matches!(
        Mapping::create(&p, 1 << 20, &opts()),
        Err(MapError::AlreadyExists { .. })
    ));
    let m = Mapping::open(&p, &opts()).unwrap();
    let mut b = [0u8; 4];
    m.read_at(0, &mut b).unwrap();
    assert_eq!(
        &b, b"keep",
        "a refused create must not touch the existing file"
    );
}

#[test]
fn dax_required_on_a_page_cache_file_is_refused() {
    // The host file systems of CI have no DAX: MAP_SYNC is refused, and with require_dax the
    // mapping fails instead of silently degrading. (In the DAX guest the same call succeeds:
    // see dax_guest.rs.)
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("pool");
    let m = Mapping::create(&p, 1 << 20, &opts()).unwrap();
    if m.kind() == MapKind::SyncDax {
        eprintln!("this file system supports MAP_SYNC; nothing to test here");
        return;
    }
    assert_eq!(m.kind(), MapKind::PageCache);
    drop(m);
    let e = Mapping::open(&p, &opts().require_dax(true)).unwrap_err();
    assert!(matches!(e, MapError::NotDax { .. }), "{e:?}");
    let q = d.path().join("pool2");
    assert!(matches!(
        Mapping::create(&q, 1 << 20, &opts().require_dax(true)),
        Err(MapError::NotDax { .. })
    ));
    assert!(!q.exists(), "a refused create leaves no file behind");
}

#[test]
fn a_character_device_that_is_not_devdax_is_refused() {
    let e = Mapping::open(Path::new("/dev/null"), &opts()).unwrap_err();
    assert!(matches!(e, MapError::NotDax { .. }), "{e:?}");
    let e = Mapping::open(Path::new("/dev/zero"), &opts().require_dax(true)).unwrap_err();
    assert!(matches!(e, MapError::NotDax { .. }), "{e:?}");
}

/// Mounts a small tmpfs for the duration of a test (needs root, as CI has; the test says so and
/// passes vacuously only when mounting is impossible, which it prints).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(opts: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Some(SmallFs { dir })
        } else {
            eprintln!("cannot mount tmpfs (not root?): skipping");
            None
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn must_mount() -> bool {
    // In CI (as root) the mount must work: a skip there would hide a regression.
    std::env::var("CI").is_ok() && unsafe_free_is_root()
}

fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_full_file_system_reports_no_space_and_leaves_no_file() {
    let Some(fs) = SmallFs::mount("size=1m") else {
        assert!(!must_mount(), "mount failed although running as root in CI");
        return;
    };
    let p = fs.path().join("big.pool");
    match Mapping::create(&p, 64 << 20, &opts()) {
        Err(MapError::NoSpace { requested, .. }) => assert_eq!(requested, 64 << 20),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!p.exists());
    // A pool that fits still works on the same file system.
    let m = Mapping::create(&fs.path().join("ok.pool"), 256 << 10, &opts()).unwrap();
    m.write_at(0, b"x").unwrap();
    m.persist_range(0, 1).unwrap();
    // Growing past the free space is a typed error too, and the mapping stays usable.
    let mut m = Mapping::create(
        &fs.path().join("g.pool"),
        64 << 10,
        &opts().reserve(64 << 20),
    )
    .unwrap();
    assert!(matches!(m.grow(32 << 20), Err(MapError::NoSpace { .. })));
    m.write_at(0, b"still fine").unwrap();
    assert_eq!(m.len(), 64 << 10);
}

#[test]
fn a_read_only_file_system_is_permission_denied() {
    let Some(fs) = SmallFs::mount("size=1m") else {
        assert!(!must_mount(), "mount failed although running as root in CI");
        return;
    };
    let p = fs.path().join("ro.pool");
    std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount read-only");
    let e = Mapping::open(&p, &opts()).unwrap_err();
    assert!(matches!(e, MapError::PermissionDenied { .. }), "{e:?}");
    let e = Mapping::create(&fs.path().join("new.pool"), 64 << 10, &opts()).unwrap_err();
    assert!(matches!(e, MapError::PermissionDenied { .. }), "{e:?}");
}

#[test]
fn an_unreadable_file_is_permission_denied_for_non_root() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("locked.pool");
    std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    let r = Mapping::open(&p, &opts());
    if unsafe_free_is_root() {
        // root bypasses file modes: the read-only-mount test covers EACCES/EROFS for root.
        assert!(r.is_ok());
    } else {
        assert!(matches!(r, Err(MapError::PermissionDenied { .. })), "{r:?}");
    }
}

/// Mappings made at the same time by several threads never overlap. Regression test: a
/// `MAP_FIXED` call with `MAP_SYNC` that ext4 without DAX refuses has already unmapped its range
/// (Linux 6.x), so the old "try MAP_SYNC, then retry without" let another thread's reservation
/// take the hole; the two mappings then shared pages and one thread's unmap destroyed the
/// other's pool (SIGSEGV). File mappers fill their whole mapping with their own pattern and
/// check it while other threads make and drop large anonymous reservations.
#[test]
fn concurrent_mappings_never_overlap() {
    let d = tempfile::tempdir().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let stop = &stop;
            s.spawn(move || {
                let o = MapOptions::new().reserve(1 << 36);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200_000 {
                    let m = Mapping::anonymous_with(1 << 20, &o).unwrap();
                    drop(m);
                    n += 1;
                }
            });
        }
        let mut files = Vec::new();
        for t in 0..2 {
            let dir = d.path();
            files.push(s.spawn(move || {
                for r in 0..300 {
                    let p = dir.join(format!("m{t}-{r}"));
                    let o = MapOptions::new().reserve(1 << 36);
                    let m = Mapping::create(&p, 2 << 20, &o).unwrap();
                    let tag = (t * 1000 + r) as u64;
                    let base = m.as_ptr().cast::<u64>();
                    let n = m.len() / 8;
                    for i in (0..n).step_by(512) {
                        // SAFETY: inside the mapping, aligned.
                        unsafe { base.add(i).write_volatile(tag) };
                    }
                    std::thread::yield_now();
                    for i in (0..n).step_by(512) {
                        // SAFETY: as above.
                        let v = unsafe { base.add(i).read_volatile() };
                        assert_eq!(v, tag, "thread {t} round {r}: word {i} overwritten");
                    }
                    drop(m);
                    std::fs::remove_file(&p).unwrap();
                }
            }));
        }
        for f in files {
            let r = f.join();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r.unwrap();
        }
    });
}
