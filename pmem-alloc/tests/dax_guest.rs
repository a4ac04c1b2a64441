//! Tests that need real (emulated) DAX: they run inside the QEMU guest of `tools/daxvm`, whose
//! init mounts an fsdax namespace `-o dax` on `$DAXVM_MNT` (block device `$DAXVM_DEV`) and sets
//! `DAXVM_GUEST=1`. On the host they are ignored; `tools/daxvm/guest-tests.sh` builds this file,
//! boots the guest and runs each test with `--ignored --exact NAME --test-threads=1`.
//!
//! Every test refuses to run without `DAXVM_GUEST=1` (some of them mount file systems or
//! reconfigure NVDIMM namespaces, which must never happen on a developer's machine).
//!
//! Environment read here:
//! - `DAXVM_MNT`, `DAXVM_DEV`: the ext4 `-o dax` mount and its `/dev/pmemN` (set by the guest init);
//! - `PMEM_ALLOC_FLUSH`: when set, the DAX tests check that the persister uses that method;
//! - `DAXVM_PHASE` (`write` | `check`) and `DAXVM_MARKER`: the two phases of the power-failure
//!   tests; their marker is `$DAXVM_MARKER-<test name>`.
//!
//! Naming conventions that `guest-tests.sh` relies on: tests named `devdax_*` run in a guest
//! booted with `--setup none` (no fsdax namespace; they make a devdax one), all others on the
//! fsdax mount; tests whose name contains `power_failure` run twice, `DAXVM_PHASE=write` (the
//! harness kills qemu on [`POWER_FAIL_LINE`]) and `DAXVM_PHASE=check` in the next boot.

use pmem_alloc::flush::FlushMethod;
use pmem_alloc::map::{MapError, MapKind, MapOptions, Mapping};
use pmem_alloc::pool::{Pool, PoolOptions};
use pmem_alloc::pptr::{PPtr, PSafe};
use pmem_alloc::volatile::VolatileHeap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::Layout;
use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const IGNORE: &str = "needs a DAX guest: tools/daxvm/guest-tests.sh";
/// Line the power-failure test prints when its marker is durable; the harness kills qemu on it.
const POWER_FAIL_LINE: &str = "DAXVM-POWER-FAIL-NOW";
const TMPFS_MAGIC: i64 = 0x0102_1994;
const EXT4_SUPER_MAGIC: i64 = 0xEF53;

fn in_guest() {
    assert_eq!(
        std::env::var("DAXVM_GUEST").as_deref(),
        Ok("1"),
        "this test only runs inside the DAX guest ({IGNORE})"
    );
}

/// The ext4 `-o dax` mount point (`$DAXVM_MNT`), checked to be a mounted ext4 with `dax`.
fn dax_mnt() -> PathBuf {
    in_guest();
    let mnt = PathBuf::from(std::env::var_os("DAXVM_MNT").expect("DAXVM_MNT is not set"));
    let dev = std::env::var("DAXVM_DEV").expect("DAXVM_DEV is not set");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not a mount point:\n{mounts}", mnt.display()));
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[0], dev, "DAXVM_DEV does not match /proc/mounts: {line}");
    assert_eq!(f[2], "ext4", "{line}");
    assert!(
        f[3].split(',').any(|o| o == "dax" || o == "dax=always"),
        "not mounted -o dax: {line}"
    );
    assert_eq!(statfs(&mnt).f_type as i64, EXT4_SUPER_MAGIC);
    mnt
}

fn statfs(p: &Path) -> libc::statfs {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is NUL-terminated and `st` is writable memory of the right size.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: statfs succeeded and filled `st`.
    unsafe { st.assume_init() }
}

/// A fresh path on `dir` (removed first if a previous run left it).
fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// The `VmFlags:` line of the mapping that starts at `addr`, from /proc/self/smaps.
fn vmflags(addr: *const u8) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let start = format!("{:x}-", addr as usize);
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = first.starts_with(&start);
        } else if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(String::from).collect();
            }
        }
    }
    panic!("no mapping at {addr:p} in /proc/self/smaps");
}

/// The flush method expected for a synchronous mapping: `$PMEM_ALLOC_FLUSH` if set, else a CPU
/// flush instruction (the guest CPU, TCG `-cpu max`, has clwb).
fn check_cpu_flush(m: &Mapping) {
    let got = m.persister().method();
    match std::env::var("PMEM_ALLOC_FLUSH") {
        Ok(v) if !v.is_empty() => {
            assert_eq!(
                got,
                v.parse::<FlushMethod>().unwrap(),
                "PMEM_ALLOC_FLUSH={v}"
            )
        }
        _ => assert!(
            got.is_cpu_flush(),
            "expected a CPU flush on {}, got {got}",
            m.kind()
        ),
    }
    println!(
        "{}: {} with flush method {got}",
        m.path().display(),
        m.kind()
    );
}

/// Writes a pattern at both ends of the mapping, persists it, reads it back.
fn write_persist_read(m: &Mapping, tag: &[u8]) {
    let last = m.len() - 4096;
    for off in [0, 64 * 3 + 5, last] {
        m.write_at(off, tag).unwrap();
        m.persist_range(off, tag.len()).unwrap();
    }
    for off in [0, 64 * 3 + 5, last] {
        let mut buf = vec![0u8; tag.len()];
        m.read_at(off, &mut buf).unwrap();
        assert_eq!(buf, tag, "offset {off}");
    }
}

/// A tmpfs of `size` mounted on a fresh directory in /tmp, unmounted and removed on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        in_guest();
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!("size={size}")).unwrap();
        // SAFETY: all pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        assert_eq!(statfs(dir.path()).f_type as i64, TMPFS_MAGIC);
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// (a) A pool file on the `-o dax` ext4 mount is mapped with `MAP_SYNC`, `require_dax` accepts
/// it, the kernel marks the VMA `sf` (VM_SYNC), and data round-trips through flush + fence.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn fsdax_file_is_sync_dax() {
    let mnt = dax_mnt();
    let path = fresh(&mnt, "sync-dax.pool");
    let m = Mapping::create(&path, 8 << 20, &MapOptions::new()).unwrap();
    assert_eq!(m.kind(), MapKind::SyncDax);
    assert!(m.kind().is_synchronous());
    let flags = vmflags(m.as_ptr());
    assert!(
        flags.iter().any(|f| f == "sf"),
        "no 'sf' in VmFlags {flags:?}"
    );
    println!("VmFlags of the MAP_SYNC mapping: {}", flags.join(" "));
    check_cpu_flush(&m);
    write_persist_read(&m, b"fsdax round trip");
    drop(m);

    // require_dax: accepted for the same file (open) and for a new one (create).
    let dax = MapOptions::new().require_dax(true);
    let m = Mapping::open(&path, &dax).unwrap();
    assert_eq!(m.kind(), MapKind::SyncDax);
    let mut buf = [0u8; 16];
    m.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"fsdax round trip");
    drop(m);
    let path2 = fresh(&mnt, "sync-dax-required.pool");
    let m = Mapping::create(&path2, 4 << 20, &dax).unwrap();
    assert_eq!(m.kind(), MapKind::SyncDax);
    write_persist_read(&m, b"required");
    drop(m);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&path2).unwrap();
}

/// (b) The same code on tmpfs: the kernel refuses `MAP_SYNC`, so the mapping falls back to the
/// page cache (msync) and `require_dax` reports `NotDax`.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn tmpfs_file_is_page_cache_and_not_dax() {
    let fs = Tmpfs::mount("64m");
    let path = fs.path().join("page-cache.pool");
    let m = Mapping::create(&path, 8 << 20, &MapOptions::new()).unwrap();
    assert_eq!(m.kind(), MapKind::PageCache);
    assert!(!m.kind().is_synchronous());
    let flags = vmflags(m.as_ptr());
    assert!(
        !flags.iter().any(|f| f == "sf"),
        "unexpected 'sf' in VmFlags {flags:?}"
    );
    let method = m.persister().method();
    match std::env::var("PMEM_ALLOC_FLUSH").as_deref() {
        Ok("none") => assert_eq!(method, FlushMethod::None),
        _ => assert_eq!(method, FlushMethod::Msync),
    }
    write_persist_read(&m, b"page cache");
    drop(m);

    let dax = MapOptions::new().require_dax(true);
    match Mapping::open(&path, &dax) {
        Err(MapError::NotDax { path: p, reason }) => {
            assert_eq!(p, path);
            println!("open(require_dax) on tmpfs: NotDax: {reason}");
        }
        other => panic!("expected NotDax, got {other:?}"),
    }
    let path2 = fs.path().join("required.pool");
    match Mapping::create(&path2, 4 << 20, &dax) {
        Err(MapError::NotDax { .. }) => {}
        other => panic!("expected NotDax, got {other:?}"),
    }
    assert!(
        !path2.exists(),
        "create(require_dax) left {} behind",
        path2.display()
    );
}

fn ndctl(args: &[&str]) -> (bool, String) {
    let out = Command::new("ndctl")
        .args(args)
        .output()
        .expect("cannot run ndctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("ndctl {}: {}{}", args.join(" "), text.trim(), err.trim());
    (out.status.success(), text)
}

/// The `/dev/daxN.M` named by the first `"chardev"` of ndctl's JSON, once it exists.
fn chardev(json: &str) -> PathBuf {
    let name = json
        .split("\"chardev\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no chardev in {json}"));
    let dev = PathBuf::from(format!("/dev/{name}"));
    for _ in 0..100 {
        if dev.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(dev.exists(), "{} did not appear", dev.display());
    dev
}

/// The `/dev/daxN.M` of an existing devdax namespace (`$DAXVM_DEVDAX` if set), if any.
fn existing_devdax_device() -> Option<PathBuf> {
    in_guest();
    if let Ok(d) = std::env::var("DAXVM_DEVDAX") {
        return Some(d.into());
    }
    let (_, list) = ndctl(&["list", "-N", "-m", "devdax"]);
    list.contains("\"mode\":\"devdax\"").then(|| chardev(&list))
}

/// The `/dev/daxN.M` of a devdax namespace: an existing one, or one made with ndctl on the
/// first region (the guest must have been booted with `--setup none`).
fn devdax_device() -> PathBuf {
    if let Some(dev) = existing_devdax_device() {
        return dev;
    }
    let (_, list) = ndctl(&["list", "-N"]);
    assert!(
        !list.contains("\"mode\":\"fsdax\""),
        "an fsdax namespace exists: boot the guest with --setup none for the devdax tests"
    );
    // Empty (labelled) DIMM: initialise its label area, then carve a devdax namespace.
    assert!(ndctl(&["disable-region", "all"]).0);
    ndctl(&["init-labels", "-f", "all"]);
    assert!(ndctl(&["enable-region", "all"]).0);
    let (ok, json) = ndctl(&["create-namespace", "-m", "devdax", "-r", "region0"]);
    let (ok, json) = if ok {
        (ok, json)
    } else {
        // Label-less DIMM: convert the raw namespace in place.
        ndctl(&[
            "create-namespace",
            "-m",
            "devdax",
            "-f",
            "-e",
            "namespace0.0",
        ])
    };
    assert!(ok, "ndctl create-namespace -m devdax failed");
    chardev(&json)
}

/// (c) A device-DAX character device maps as `DevDax` (with or without `require_dax`), and data
/// round-trips through flush + fence and a second mapping.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn devdax_device_maps_as_devdax() {
    let dev = devdax_device();
    let m = Mapping::open(&dev, &MapOptions::new().require_dax(true)).unwrap();
    assert_eq!(m.kind(), MapKind::DevDax);
    assert!(m.len() >= 16 << 20, "devdax size {}", m.len());
    assert_eq!(
        m.as_ptr() as usize % (2 << 20),
        0,
        "devdax mapping not 2 MiB aligned"
    );
    println!("{}: {} bytes", dev.display(), m.len());
    check_cpu_flush(&m);
    write_persist_read(&m, b"devdax round trip");
    drop(m);
    let m = Mapping::open(&dev, &MapOptions::new()).unwrap();
    assert_eq!(m.kind(), MapKind::DevDax);
    let mut buf = [0u8; 17];
    m.read_at(m.len() - 4096, &mut buf).unwrap();
    assert_eq!(&buf, b"devdax round trip");
    // A device-DAX mapping cannot grow.
    let mut m = m;
    let len = m.len();
    assert!(matches!(
        m.grow(len + (2 << 20)),
        Err(MapError::Unsupported { .. })
    ));
}

/// The phase of a two-phase power-failure test: `DAXVM_PHASE=write|check`.
fn phase() -> String {
    std::env::var("DAXVM_PHASE").expect("DAXVM_PHASE=write|check is not set")
}

/// The marker of the power-failure test `test`: `$DAXVM_MARKER` (unique per harness run) and the
/// test's name, so that the markers of two tests on one image differ.
fn marker(test: &str) -> String {
    let run = std::env::var("DAXVM_MARKER").unwrap_or_else(|_| "DAXVM-MARKER".into());
    format!("{run}-{test}")
}

/// Offsets of the power-failure marker in a mapping of `len` bytes: two on the first pages, one
/// on the last page.
fn marker_offsets(len: usize) -> [usize; 3] {
    [0, 4096 + 64, len - 4096]
}

/// Power-failure phase `write`: stores the marker, makes it durable with `persist_range` only
/// (no msync, no fsync), prints [`POWER_FAIL_LINE`] and waits for the harness to kill qemu.
fn write_marker_and_wait_for_power_failure(m: &Mapping, test: &str) -> ! {
    let marker = marker(test);
    let offsets = marker_offsets(m.len());
    for off in offsets {
        m.write_at(off, marker.as_bytes()).unwrap();
        m.persist_range(off, marker.len()).unwrap();
    }
    // Straight to fd 1 (not captured by the test harness), on a line of its own.
    let mut out = std::io::stdout().lock();
    let (path, kind) = (m.path().display(), m.kind());
    writeln!(
        out,
        "\n{POWER_FAIL_LINE} {marker} persisted at {offsets:?} of {path} ({kind})"
    )
    .unwrap();
    out.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
    panic!("qemu was not killed within 600 s");
}

/// Power-failure phase `check`: the marker is at every offset.
fn check_marker(m: &Mapping, test: &str) {
    let marker = marker(test);
    let offsets = marker_offsets(m.len());
    for off in offsets {
        let mut buf = vec![0u8; marker.len()];
        m.read_at(off, &mut buf).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&buf),
            marker,
            "offset {off} of {}",
            m.path().display()
        );
    }
    println!(
        "{marker} found at {offsets:?} of {} after the power failure",
        m.path().display()
    );
}

/// (d) Power failure on fsdax. Phase `write`: a new 16 MiB pool file on the `-o dax` mount,
/// marker persisted through the `MAP_SYNC` mapping, then qemu is killed. Phase `check` (next
/// boot, after ext4's journal recovery): the file exists, maps with `MAP_SYNC` again and holds
/// the marker.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn power_failure_keeps_persisted_data() {
    let mnt = dax_mnt();
    let path = mnt.join("power-failure.pool");
    let dax = MapOptions::new().require_dax(true);
    match phase().as_str() {
        "write" => {
            let _ = std::fs::remove_file(&path);
            let m = Mapping::create(&path, 16 << 20, &dax).unwrap();
            assert_eq!(m.kind(), MapKind::SyncDax);
            check_cpu_flush(&m);
            write_marker_and_wait_for_power_failure(&m, "power_failure_keeps_persisted_data");
        }
        "check" => {
            let m = Mapping::open(&path, &dax)
                .unwrap_or_else(|e| panic!("after the power failure: {e}"));
            assert_eq!(m.kind(), MapKind::SyncDax);
            assert_eq!(m.len(), 16 << 20);
            check_marker(&m, "power_failure_keeps_persisted_data");
            drop(m);
            std::fs::remove_file(&path).unwrap();
        }
        other => panic!("DAXVM_PHASE={other}: expected write or check"),
    }
}

/// (d) Power failure on device DAX. Phase `write`: marker persisted through the `/dev/daxN.M`
/// mapping, then qemu is killed. Phase `check` (next boot): the namespace is still there (its
/// configuration lives in the DIMM's labels) and holds the marker.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn devdax_power_failure_keeps_persisted_data() {
    let phase = phase();
    let dev = match phase.as_str() {
        "write" => devdax_device(),
        _ => existing_devdax_device().expect("no devdax namespace after the power failure"),
    };
    let m = Mapping::open(&dev, &MapOptions::new().require_dax(true)).unwrap();
    assert_eq!(m.kind(), MapKind::DevDax);
    match phase.as_str() {
        "write" => {
            check_cpu_flush(&m);
            write_marker_and_wait_for_power_failure(
                &m,
                "devdax_power_failure_keeps_persisted_data",
            );
        }
        "check" => check_marker(&m, "devdax_power_failure_keeps_persisted_data"),
        other => panic!("DAXVM_PHASE={other}: expected write or check"),
    }
}

/// (e) A file larger than the free space of a small tmpfs: `NoSpace`, and no file left behind.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn create_on_full_tmpfs_is_no_space() {
    let fs = Tmpfs::mount("1m");
    let path = fs.path().join("too-big.pool");
    match Mapping::create(&path, 4 << 20, &MapOptions::new()) {
        Err(MapError::NoSpace { path: p, requested }) => {
            assert_eq!(p, path);
            assert_eq!(requested, 4 << 20);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(!path.exists(), "{} left behind", path.display());
    assert_eq!(std::fs::read_dir(fs.path()).unwrap().count(), 0);
    // What fits still works.
    let m = Mapping::create(&path, 512 << 10, &MapOptions::new()).unwrap();
    write_persist_read(&m, b"fits");
}

/// (e) The same on the `-o dax` ext4 itself: one byte more than its free space is `NoSpace`,
/// and neither a file nor its blocks are left behind.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn create_larger_than_free_dax_space_is_no_space() {
    let mnt = dax_mnt();
    let path = fresh(&mnt, "too-big.pool");
    let before = statfs(&mnt);
    let free = before.f_bavail * before.f_bsize as u64;
    let size = free + (64 << 20);
    match Mapping::create(&path, size, &MapOptions::new().require_dax(true)) {
        Err(MapError::NoSpace { requested, .. }) => assert_eq!(requested, size),
        other => panic!("expected NoSpace for {size} bytes with {free} free, got {other:?}"),
    }
    assert!(!path.exists(), "{} left behind", path.display());
    // ext4 may keep a few blocks busy until its journal commits: allow 1 MiB of slack.
    let after = statfs(&mnt);
    let slack = (1 << 20) / before.f_bsize as u64;
    assert!(
        after.f_bavail + slack >= before.f_bavail,
        "blocks leaked by the failed create: {} free before, {} after",
        before.f_bavail,
        after.f_bavail
    );
}

// ---------------------------------------------------------------------------------------------
// (f) Power failure in the middle of a multi-threaded pool workload.

const PF_POOL_TEST: &str = "pool_power_failure_recovers";
/// Size of the pool file on the `-o dax` mount.
const PF_POOL_SIZE: u64 = 32 << 20;
/// Lists hanging off the root, each protected by its own mutex.
const PF_LISTS: usize = 3;
/// Worker threads (the guest has one vCPU: they interleave by preemption, mid-operation).
const PF_THREADS: u64 = 3;
/// Room for the marker in the root and in the marker blocks.
const PF_MARKER_MAX: usize = 128;
/// The second marker block is a large allocation (above `MAX_SMALL`).
const PF_LARGE_MARKER: usize = 40 << 10;
/// The write phase lets the workload run at least this long (and this many operations) before
/// printing the power-fail line.
const PF_WARMUP: Duration = Duration::from_secs(2);
const PF_MIN_OPS: u64 = 1000;

#[repr(C)]
struct PfRoot {
    marker_len: u64,
    marker: [u8; PF_MARKER_MAX],
    /// A small and a large block, each starting with the marker.
    marker_blocks: [PPtr<u8>; 2],
    heads: [PPtr<PfNode>; PF_LISTS],
}
// SAFETY: repr(C), PSafe fields only.
unsafe impl PSafe for PfRoot {}

/// List node; `len` checksummed payload bytes follow the header.
#[repr(C)]
struct PfNode {
    next: PPtr<PfNode>,
    id: u64,
    len: u64,
    sum: u64,
}
// SAFETY: repr(C), PSafe fields only.
unsafe impl PSafe for PfNode {}
const PF_HDR: usize = std::mem::size_of::<PfNode>();

fn pf_sum(id: u64, len: u64) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03
}

fn pf_byte(id: u64, i: usize) -> u8 {
    (id as usize).wrapping_mul(131).wrapping_add(i * 7) as u8 ^ 0x5c
}

/// The durable head pointer of list `l`.
fn pf_head_slot(root: PPtr<PfRoot>, l: usize) -> PPtr<PPtr<PfNode>> {
    root.cast::<PPtr<PfNode>>()
        .byte_add((std::mem::offset_of!(PfRoot, heads) + 8 * l) as u64)
}

/// The pool is on a synchronous DAX mapping: the file maps as `MapKind::SyncDax` with
/// `require_dax`, the pool's own mapping is `sf` (VM_SYNC) and persists with a CPU flush.
fn pf_require_sync_dax(pool: &Pool, path: &Path) {
    let m = Mapping::open(path, &MapOptions::new().require_dax(true)).unwrap();
    assert_eq!(m.kind(), MapKind::SyncDax);
    drop(m);
    let flags = vmflags(pool.base());
    assert!(
        flags.iter().any(|f| f == "sf"),
        "pool mapping without 'sf' in VmFlags {flags:?}"
    );
    let got = pool.persister().method();
    match std::env::var("PMEM_ALLOC_FLUSH") {
        Ok(v) if !v.is_empty() => assert_eq!(got, v.parse::<FlushMethod>().unwrap()),
        _ => assert!(got.is_cpu_flush(), "pool persists with {got}"),
    }
    println!(
        "{}: {} pool, VmFlags {}, flush method {got}",
        path.display(),
        MapKind::SyncDax,
        flags.join(" ")
    );
}

/// Stores the marker in the root and in two new blocks (small, large), durably: the host finds
/// it three times in the NVDIMM image after the kill.
fn pf_write_markers(pool: &Pool, root: PPtr<PfRoot>, marker: &str) {
    let mb = marker.as_bytes();
    assert!(mb.len() <= PF_MARKER_MAX, "marker too long: {marker}");
    let r = pool.get(root).unwrap();
    for (i, size) in [PF_MARKER_MAX, PF_LARGE_MARKER].into_iter().enumerate() {
        let b = pool.alloc(size).unwrap();
        let bp = pool.get(b).unwrap();
        // SAFETY: fresh block of `size` >= mb.len() bytes; the root is ours (no threads yet).
        unsafe {
            std::ptr::write_bytes(bp, 0, size);
            std::ptr::copy_nonoverlapping(mb.as_ptr(), bp, mb.len());
            pool.persist(b, size);
            let slot = root
                .cast::<PPtr<u8>>()
                .byte_add((std::mem::offset_of!(PfRoot, marker_blocks) + 8 * i) as u64);
            pool.publish(slot, b).unwrap();
        }
    }
    // SAFETY: as above.
    unsafe {
        let dst = std::ptr::addr_of_mut!((*r).marker).cast::<u8>();
        std::ptr::copy_nonoverlapping(mb.as_ptr(), dst, mb.len());
        (*r).marker_len = mb.len() as u64;
    }
    pool.persist_val(root);
}

/// The marker is in the root and at the start of both marker blocks; returns the blocks
/// (address, length) for the overlap check.
fn pf_check_markers(pool: &Pool, root: PPtr<PfRoot>, marker: &str) -> Vec<(usize, usize)> {
    let mb = marker.as_bytes();
    let r = pool.get(root).unwrap();
    let mut blocks = Vec::new();
    // SAFETY: read-only; pointers resolved (and bounds checked) by the pool.
    unsafe {
        let len = (*r).marker_len as usize;
        assert!(len <= PF_MARKER_MAX, "root marker length {len}");
        assert_eq!(
            String::from_utf8_lossy(&(&(*r).marker)[..len]),
            marker,
            "marker in the root"
        );
        for (i, size) in [PF_MARKER_MAX, PF_LARGE_MARKER].into_iter().enumerate() {
            let b = (*r).marker_blocks[i];
            let bp = pool
                .get(b)
                .unwrap_or_else(|| panic!("marker block {i} lost"));
            let got = std::slice::from_raw_parts(bp, mb.len());
            assert_eq!(String::from_utf8_lossy(got), marker, "marker block {i}");
            blocks.push((bp as usize, size));
        }
    }
    blocks
}

/// Walks every list and verifies every node (header checksum, payload); returns the nodes as
/// (address, length).
fn pf_verify(pool: &Pool, root: PPtr<PfRoot>) -> Result<Vec<(usize, usize)>, String> {
    let mut seen = HashSet::new();
    let mut nodes = Vec::new();
    for l in 0..PF_LISTS {
        // SAFETY: read-only walk (no other thread runs); pointers resolved by the pool.
        unsafe {
            let mut cur = *pool.get(pf_head_slot(root, l)).unwrap();
            while !cur.is_null() {
                let np = pool
                    .get(cur)
                    .ok_or_else(|| format!("list {l}: link {:#x} outside the pool", cur.raw()))?;
                if !seen.insert(cur.offset()) {
                    return Err(format!("list {l}: node {:#x} reached twice", cur.offset()));
                }
                let (id, len) = ((*np).id, (*np).len);
                if (*np).sum != pf_sum(id, len) || len > 200_000 {
                    return Err(format!("list {l}: node {id} header torn"));
                }
                let d = np.cast::<u8>().add(PF_HDR);
                let payload = std::slice::from_raw_parts(d, len as usize);
                if let Some(i) = (0..len as usize).find(|&i| payload[i] != pf_byte(id, i)) {
                    return Err(format!("list {l}: node {id} payload torn at byte {i}"));
                }
                nodes.push((np as usize, PF_HDR + len as usize));
                cur = (*np).next;
            }
        }
    }
    Ok(nodes)
}

/// One worker: allocate + fill + persist + publish, or unlink (durably) + free, on random lists,
/// until `stop` is set or `max_ops` operations were done by all workers together.
fn pf_worker(
    pool: &Pool,
    root: PPtr<PfRoot>,
    lists: &[Mutex<usize>; PF_LISTS],
    ops: &AtomicU64,
    stop: &AtomicBool,
    max_ops: u64,
    first_id: u64,
) {
    let mut rng = StdRng::seed_from_u64(first_id ^ std::process::id() as u64);
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) && ops.load(Ordering::Relaxed) < max_ops {
        let l = rng.gen_range(0..PF_LISTS);
        let mut count = lists[l].lock().unwrap();
        let slot = pf_head_slot(root, l);
        // SAFETY: list `l` (its head slot and its nodes) is only touched under its mutex; nodes
        // are live blocks of this pool.
        unsafe {
            let head = *pool.get(slot).unwrap();
            let p_grow = if *count < 300 { 0.65 } else { 0.35 };
            if head.is_null() || rng.gen_bool(p_grow) {
                let len = if rng.gen_bool(0.03) {
                    rng.gen_range(33_000..100_000) // a large allocation
                } else {
                    rng.gen_range(0..2_000)
                };
                let Ok(raw) = pool.alloc(PF_HDR + len) else {
                    continue;
                };
                let n = raw.cast::<PfNode>();
                let np = pool.get(n).unwrap();
                id += 1;
                np.write(PfNode {
                    next: head,
                    id,
                    len: len as u64,
                    sum: pf_sum(id, len as u64),
                });
                let d = std::slice::from_raw_parts_mut(np.cast::<u8>().add(PF_HDR), len);
                for (i, b) in d.iter_mut().enumerate() {
                    *b = pf_byte(id, i);
                }
                // ordering: the node is durable before the link to it
                pool.persist(n, PF_HDR + len);
                pool.publish(slot, n).unwrap();
                *count += 1;
            } else {
                // unlink the head or its successor durably, then free it
                let second = (*pool.get(head).unwrap()).next;
                if !second.is_null() && rng.gen_bool(0.5) {
                    let third = (*pool.get(second).unwrap()).next;
                    pool.publish(head.cast::<PPtr<PfNode>>(), third).unwrap(); // head.next
                    pool.free(second);
                } else {
                    pool.publish(slot, second).unwrap();
                    pool.free(head);
                }
                *count -= 1;
            }
        }
        drop(count);
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The number of nodes of each list (the workers' bookkeeping).
fn pf_counts(pool: &Pool, root: PPtr<PfRoot>) -> [Mutex<usize>; PF_LISTS] {
    std::array::from_fn(|l| {
        let mut n = 0;
        // SAFETY: read-only walk before the workers start.
        unsafe {
            let mut cur = *pool.get(pf_head_slot(root, l)).unwrap();
            while let Some(np) = pool.get(cur) {
                n += 1;
                cur = (*np).next;
            }
        }
        Mutex::new(n)
    })
}

/// Allocated blocks (checker) == reachable nodes + 2 marker blocks + the root.
fn pf_check_counts(pool: &mut Pool, nodes: usize, what: &str) {
    let chk = pool
        .check()
        .unwrap_or_else(|e| panic!("{what}: check: {e}"));
    assert_eq!(
        chk.run_blocks_live + chk.large,
        nodes + 3,
        "{what}: {} small + {} large blocks allocated, {nodes} nodes + 2 marker blocks + root \
         reachable ({chk:?})",
        chk.run_blocks_live,
        chk.large
    );
    println!(
        "{what}: check OK: {} small + {} large blocks = {nodes} nodes + 2 marker blocks + root",
        chk.run_blocks_live, chk.large
    );
}

/// (f) Power failure during a multi-threaded pool workload on fsdax. Phase `write`: a new pool
/// on the `-o dax` mount (`require_dax`: `MAP_SYNC`), the marker persisted in the root and in a
/// small and a large block, then three threads allocate, fill, persist and link checksummed
/// nodes into three lists and unlink (durably) and free others; after a warm-up the test prints
/// the power-fail line while they keep working, and qemu is killed mid-operation. Phase `check`:
/// the pool opens with recovery, the markers are there, every reachable node verifies, the
/// checker counts exactly the reachable blocks as allocated; new allocations never overlap them;
/// more work, a clean close, and a reopen that is clean and finds the same.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn pool_power_failure_recovers() {
    let mnt = dax_mnt();
    let path = mnt.join("pool-power-failure.pool");
    let opts = PoolOptions {
        require_dax: true,
        ..PoolOptions::default()
    };
    let marker = marker(PF_POOL_TEST);
    match phase().as_str() {
        "write" => {
            let _ = std::fs::remove_file(&path);
            let pool = Pool::create(&path, PF_POOL_SIZE, &opts).unwrap();
            pf_require_sync_dax(&pool, &path);
            let root = pool.root::<PfRoot>().unwrap();
            pf_write_markers(&pool, root, &marker);
            let lists = pf_counts(&pool, root);
            let (ops, stop) = (AtomicU64::new(0), AtomicBool::new(false));
            std::thread::scope(|s| {
                for t in 0..PF_THREADS {
                    let (pool, lists, ops, stop) = (&pool, &lists, &ops, &stop);
                    s.spawn(move || pf_worker(pool, root, lists, ops, stop, u64::MAX, t << 40));
                }
                let t0 = Instant::now();
                while t0.elapsed() < PF_WARMUP
                    || (ops.load(Ordering::Relaxed) < PF_MIN_OPS
                        && t0.elapsed() < Duration::from_secs(60))
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let n = ops.load(Ordering::Relaxed);
                let secs = t0.elapsed().as_secs_f64();
                if n < PF_MIN_OPS {
                    stop.store(true, Ordering::Relaxed);
                    panic!("only {n} operations in {secs:.1} s");
                }
                let sizes: Vec<usize> = lists.iter().map(|c| *c.lock().unwrap()).collect();
                // Straight to fd 1, on a line of its own; the workers keep running.
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "\n{POWER_FAIL_LINE} {marker} persisted in the root and 2 blocks of {}; \
                     {n} operations in {secs:.1} s by {PF_THREADS} threads, lists {sizes:?}, \
                     still running",
                    path.display()
                )
                .unwrap();
                out.flush().unwrap();
                drop(out);
                std::thread::sleep(Duration::from_secs(600));
                stop.store(true, Ordering::Relaxed);
                panic!("qemu was not killed within 600 s");
            });
        }
        "check" => {
            let t0 = Instant::now();
            let mut pool = Pool::open(&path, &opts)
                .unwrap_or_else(|e| panic!("open after the power failure: {e}"));
            let rep = pool.open_report();
            println!(
                "open after the power failure: {:.1} ms, {rep:?}",
                t0.elapsed().as_secs_f64() * 1e3
            );
            assert!(
                rep.recovered,
                "no recovery after the power failure: {rep:?}"
            );
            assert!(!rep.clean, "{rep:?}");
            pf_require_sync_dax(&pool, &path);
            let root = pool.root::<PfRoot>().unwrap();
            let mut reachable = pf_check_markers(&pool, root, &marker);
            let nodes = pf_verify(&pool, root).unwrap_or_else(|e| panic!("after recovery: {e}"));
            println!(
                "{marker} found in the root and 2 blocks; {} nodes verified",
                nodes.len()
            );
            assert!(!nodes.is_empty(), "no node survived the power failure");
            assert_eq!(rep.reachable, nodes.len() + 3, "recovery's reachable count");
            pf_check_counts(&mut pool, nodes.len(), "after recovery");
            reachable.extend(&nodes);

            // New allocations never overlap a reachable block.
            let mut fresh = Vec::new();
            for i in 0..200usize {
                let size = if i % 25 == 0 { 50_000 } else { 16 + i * 24 };
                let p = pool.alloc(size).unwrap();
                let a = pool.get(p).unwrap() as usize;
                if let Some(&(s, l)) = reachable.iter().find(|&&(s, l)| a < s + l && s < a + size) {
                    panic!("new block {a:#x}+{size} overlaps reachable block {s:#x}+{l}");
                }
                fresh.push(p);
            }
            for p in fresh {
                // SAFETY: never linked, freed once.
                unsafe { pool.free(p) };
            }

            // More multi-threaded work on the recovered pool, then a clean close.
            let lists = pf_counts(&pool, root);
            let (ops, stop) = (AtomicU64::new(0), AtomicBool::new(false));
            std::thread::scope(|s| {
                for t in 0..PF_THREADS {
                    let (pool, lists, ops, stop) = (&pool, &lists, &ops, &stop);
                    s.spawn(move || {
                        pf_worker(pool, root, lists, ops, stop, 1500, 1 << 60 | t << 40)
                    });
                }
            });
            let done = ops.load(Ordering::Relaxed);
            assert!(done >= 1500, "only {done} operations after recovery");
            let nodes = pf_verify(&pool, root).unwrap_or_else(|e| panic!("after more work: {e}"));
            // SAFETY: `nodes` holds addresses of verified, live nodes.
            let new = nodes
                .iter()
                .filter(|&&(a, _)| unsafe { (*(a as *const PfNode)).id } >= 1 << 60)
                .count();
            println!(
                "after more work: {done} operations, {} nodes ({new} allocated after recovery)",
                nodes.len()
            );
            assert!(new > 0, "no node allocated after recovery is linked");
            pf_check_counts(&mut pool, nodes.len(), "after more work");
            pool.close().unwrap();

            let mut pool = Pool::open(&path, &opts).unwrap();
            let rep = pool.open_report();
            assert!(rep.clean && !rep.recovered, "reopen after close: {rep:?}");
            pf_check_markers(&pool, root, &marker);
            let again = pf_verify(&pool, root).unwrap_or_else(|e| panic!("after reopen: {e}"));
            assert_eq!(again.len(), nodes.len());
            pf_check_counts(&mut pool, again.len(), "clean reopen");
            pool.close().unwrap();
            std::fs::remove_file(&path).unwrap();
            println!("pool power failure: recovered, verified, closed and reopened cleanly");
        }
        other => panic!("DAXVM_PHASE={other}: expected write or check"),
    }
}

// ---------------------------------------------------------------------------------------------
// (g) The volatile heap (PMEM as a DRAM replacement) on DAX: an ext4 `-o dax` file and a
// device-DAX device.

type HeapVec<'h, T> = allocator_api2::vec::Vec<T, &'h VolatileHeap>;
type HeapMap<'h> =
    hashbrown::HashMap<u64, HeapVec<'h, u8>, hashbrown::DefaultHashBuilder, &'h VolatileHeap>;

/// Threads of the volatile-heap workloads (one vCPU in the guest: they interleave by preemption).
const VH_THREADS: u64 = 3;

/// The mapping (first line of its /proc/self/smaps entry) and the `VmFlags` of the VMA that
/// contains `addr`.
fn vma_of(addr: *const u8) -> (String, Vec<String>) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let a = addr as usize;
    let mut found: Option<String> = None;
    for line in smaps.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if found.is_some() {
                break;
            }
            let (lo, hi) = first.split_once('-').unwrap();
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).unwrap(),
                usize::from_str_radix(hi, 16).unwrap(),
            );
            if (lo..hi).contains(&a) {
                found = Some(line.to_string());
            }
        } else if let (Some(vma), Some(flags)) = (&found, line.strip_prefix("VmFlags:")) {
            return (
                vma.clone(),
                flags.split_whitespace().map(String::from).collect(),
            );
        }
    }
    panic!("no VMA with VmFlags contains {addr:p} in /proc/self/smaps");
}

/// The heap memory at `p` is a shared mapping of `backing` (a path prefix: the heap file on the
/// DAX mount, or the `/dev/daxN.M` device), checked in /proc/self/smaps; returns its flags.
fn require_heap_vma(p: *const u8, backing: &Path) -> Vec<String> {
    let (vma, flags) = vma_of(p);
    let file = vma.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
    assert!(
        file.starts_with(backing.to_str().unwrap()),
        "heap block {p:p} is not mapped from {}: {vma}",
        backing.display()
    );
    assert!(
        flags.iter().any(|f| f == "sh"),
        "heap mapping not shared: {vma} VmFlags {flags:?}"
    );
    println!("heap block {p:p} in {vma} VmFlags {}", flags.join(" "));
    flags
}

fn vh_byte(t: u64, i: usize) -> u8 {
    (t as usize * 37 + i * 11 + (i >> 12)) as u8
}

/// A block of `size` bytes holds `vh_byte(t, _)` at the positions `vh_fill` sets.
fn vh_check(p: *const u8, size: usize, t: u64) -> bool {
    // SAFETY: callers pass live blocks of at least `size` bytes.
    let s = unsafe { std::slice::from_raw_parts(p, size) };
    (0..size)
        .step_by(509)
        .chain([size - 1])
        .all(|i| s[i] == vh_byte(t, i))
}

/// Writes every byte of the block (memset: TCG is slow), then the pattern `vh_check` samples.
fn vh_fill(p: *mut u8, size: usize, t: u64) {
    // SAFETY: callers pass live blocks of at least `size` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, size) };
    s.fill(t as u8 ^ 0x3c);
    for i in (0..size).step_by(509).chain([size - 1]) {
        s[i] = vh_byte(t, i);
    }
}

fn all_zero(p: *const u8, size: usize) -> bool {
    // SAFETY: callers pass live blocks of at least `size` bytes.
    unsafe { std::slice::from_raw_parts(p, size) }
        .iter()
        .all(|&b| b == 0)
}

/// Zeroed allocations of every kind (small, below and above the hole-punch threshold) are zero,
/// also when they reuse memory that was just written and freed.
fn vh_zeroed(heap: &VolatileHeap, t: u64) {
    for size in [24usize, 1000, 70_000, (1 << 20) + 123, 3 << 20] {
        let l = Layout::from_size_align(size, 64).unwrap();
        for round in 0..2 {
            let p = heap.alloc_zeroed(l);
            assert!(!p.is_null(), "alloc_zeroed({size})");
            assert!(heap.owns(p));
            assert!(
                all_zero(p, size),
                "thread {t}: alloc_zeroed({size}) round {round} is not zero"
            );
            vh_fill(p, size, t);
            // SAFETY: allocated above with `l`.
            unsafe { heap.dealloc(p, l) };
        }
        // dirty memory of the same size, freed, then zeroed again
        let p = heap.alloc(l);
        assert!(!p.is_null());
        // SAFETY: fresh block of `size` bytes.
        unsafe { std::ptr::write_bytes(p, 0xFF, size) };
        // SAFETY: allocated above with `l`.
        unsafe { heap.dealloc(p, l) };
        let p = heap.alloc_zeroed(l);
        assert!(!p.is_null(), "alloc_zeroed({size})");
        assert!(
            all_zero(p, size),
            "thread {t}: alloc_zeroed({size}) after a dirty free is not zero"
        );
        // SAFETY: allocated above with `l`.
        unsafe { heap.dealloc(p, l) };
    }
}

/// One thread of the volatile-heap workload: a Vec, a hash map of byte strings (with removals),
/// large blocks of `large` bytes (some grown with realloc), zeroed allocations; everything is
/// verified and freed, except the large blocks returned as (address, size) for the caller to
/// free from another thread.
fn vh_worker(heap: &VolatileHeap, t: u64, entries: u64, large: &[usize]) -> Vec<(usize, usize)> {
    let mut rng = StdRng::seed_from_u64(t ^ 0x5eed);
    let mut nums: HeapVec<u64> = HeapVec::new_in(heap);
    let mut map: HeapMap =
        hashbrown::HashMap::with_hasher_in(hashbrown::DefaultHashBuilder::default(), heap);
    let key = |i: u64| format!("thread {t} entry {i} {}", "*".repeat((i % 61) as usize));
    for i in 0..entries {
        nums.push(i ^ t << 32);
        let mut s = HeapVec::new_in(heap);
        s.extend_from_slice(key(i).as_bytes());
        map.insert(i, s);
        if i % 4 == 3 {
            map.remove(&(i / 2));
        }
    }
    vh_zeroed(heap, t);
    // large blocks: MiBs each, a few alive at a time, one grown by realloc
    let mut kept = Vec::new();
    let mut live: Vec<(*mut u8, usize)> = Vec::new();
    for (k, &size) in large.iter().enumerate() {
        let size = size + rng.gen_range(0..4096);
        let l = Layout::from_size_align(size, 4096).unwrap();
        let p = heap.alloc(l);
        assert!(
            !p.is_null(),
            "thread {t}: alloc({size}) failed: {}",
            heap.stats()
        );
        assert!(heap.owns(p));
        vh_fill(p, size, t + k as u64);
        live.push((p, size));
        if live.len() > 2 {
            let (p, size) = live.remove(0);
            let k0 = k - 2;
            assert!(
                vh_check(p, size, t + k0 as u64),
                "thread {t}: large block {k0}"
            );
            let l = Layout::from_size_align(size, 4096).unwrap();
            if k0 % 3 == 0 {
                // SAFETY: live block allocated with `l`.
                let q = unsafe { heap.realloc(p, l, size * 2) };
                assert!(!q.is_null(), "thread {t}: realloc to {}", size * 2);
                assert!(
                    vh_check(q, size, t + k0 as u64),
                    "thread {t}: realloc lost data"
                );
                kept.push((q as usize, size * 2));
            } else {
                // SAFETY: live block allocated with `l`.
                unsafe { heap.dealloc(p, l) };
            }
        }
    }
    for (k, (p, size)) in live.into_iter().enumerate() {
        assert!(vh_check(p, size, t + (large.len() - 2 + k) as u64));
        // SAFETY: live block allocated with this layout.
        unsafe { heap.dealloc(p, Layout::from_size_align(size, 4096).unwrap()) };
    }
    // the collections survived all of that
    assert!(heap.owns(nums.as_ptr().cast()));
    assert!(nums
        .iter()
        .enumerate()
        .all(|(i, &v)| v == i as u64 ^ t << 32));
    for i in 0..entries {
        // entry k was removed at step 2k+1 (steps j with j % 4 == 3 remove j / 2): odd k
        let removed = i % 2 == 1 && 2 * i + 1 < entries;
        match map.get(&i) {
            Some(s) => {
                assert!(!removed, "thread {t}: entry {i} should be gone");
                assert!(heap.owns(s.as_ptr()));
                assert_eq!(s[..], *key(i).as_bytes(), "thread {t}: entry {i}");
            }
            None => assert!(removed, "thread {t}: entry {i} lost"),
        }
    }
    kept
}

/// Runs `VH_THREADS` workers, frees their surviving large blocks from this thread, checks the
/// heap; returns the largest `mapped` seen.
fn vh_workload(heap: &VolatileHeap, entries: u64, large: &[usize]) -> u64 {
    let t0 = Instant::now();
    let kept: Vec<(usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..VH_THREADS)
            .map(|t| s.spawn(move || vh_worker(heap, t + 1, entries, large)))
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let st = heap.stats();
    println!(
        "{VH_THREADS} threads done in {:.1} s: {st}",
        t0.elapsed().as_secs_f64()
    );
    assert!(!kept.is_empty());
    for (p, size) in kept {
        // SAFETY: large blocks handed over by the (finished) workers, each freed once.
        unsafe { heap.dealloc(p as *mut u8, Layout::from_size_align(size, 4096).unwrap()) };
    }
    let rep = heap.core().check().unwrap_or_else(|e| panic!("check: {e}"));
    println!("check OK: {rep:?}");
    st.mapped
}

/// `in_use` is back near zero (only what the caller still holds, `allowance` bytes).
fn vh_require_empty(heap: &VolatileHeap, allowance: u64) {
    let st = heap.stats();
    assert!(
        st.in_use <= allowance,
        "in use after freeing everything: {st}"
    );
    println!("after freeing everything: {st}");
}

/// (g) A volatile heap on the `-o dax` ext4. Part 1: in an unlinked file of a directory on the
/// mount (the usual way), 4 MiB initially; the mapping is a plain shared mapping of the deleted
/// heap file on the mount (no `sf`: a volatile heap does not need synchronous page faults, which
/// cost file-system metadata syncs); three threads with Vec, hash map and byte strings through the Allocator API,
/// large blocks of MiBs (the heap grows), zeroed allocations (also reusing dirty memory),
/// realloc, cross-thread frees; `check` passes and `in_use` goes back to zero. Part 2: a heap in
/// a named file, whose allocated blocks (`st_blocks`) go down when large blocks are freed (hole
/// punching), and whose punched pages come back zeroed.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn volatile_heap_on_dax_file() {
    let mnt = dax_mnt();
    let initial = 4u64 << 20;
    let heap = VolatileHeap::builder()
        .dir(&mnt)
        .size(initial)
        .max_size(192 << 20)
        .build()
        .unwrap();
    assert_eq!(heap.stats().mapped, initial);
    let l = Layout::from_size_align(64, 8).unwrap();
    let first = heap.alloc(l);
    assert!(!first.is_null() && heap.owns(first));
    let flags = require_heap_vma(first, &mnt.join(".pmem-heap-"));
    let (vma, _) = vma_of(first);
    assert!(vma.ends_with("(deleted)"), "heap file not unlinked: {vma}");
    assert!(
        !flags.iter().any(|f| f == "sf"),
        "a volatile heap should not use MAP_SYNC: 'sf' in VmFlags {flags:?}"
    );
    // 3 threads x up to 3 live blocks of 3-6 MiB: well beyond the initial 4 MiB
    let large = [3 << 20, 5 << 20, 4 << 20, 6 << 20, 3 << 20, 4 << 20];
    let mapped = vh_workload(&heap, 20_000, &large);
    assert!(
        mapped >= 32 << 20,
        "the heap did not grow: mapped {mapped} bytes"
    );
    // memory from the grown part is the DAX file too
    let big = Layout::from_size_align(8 << 20, 4096).unwrap();
    let p = heap.alloc_zeroed(big);
    assert!(!p.is_null());
    assert!(all_zero(p, 8 << 20));
    let grown = require_heap_vma(p.wrapping_add((8 << 20) - 1), &mnt.join(".pmem-heap-"));
    assert!(!grown.iter().any(|f| f == "sf"), "grown part: {grown:?}");
    // SAFETY: allocated above with `big`.
    unsafe { heap.dealloc(p, big) };
    // SAFETY: allocated above with `l`.
    unsafe { heap.dealloc(first, l) };
    heap.core().check().unwrap();
    vh_require_empty(&heap, 0);
    // beyond `max_size`: null, not a crash
    assert!(heap
        .alloc(Layout::from_size_align(256 << 20, 4096).unwrap())
        .is_null());
    drop(heap);
    assert!(
        !std::fs::read_dir(&mnt).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".pmem-heap-")),
        "a heap file was left on {}",
        mnt.display()
    );

    // Part 2: a named heap file; large frees return blocks to the file system.
    let path = fresh(&mnt, "volatile-heap.file");
    let heap = VolatileHeap::builder()
        .file(&path)
        .size(64 << 20)
        .max_size(64 << 20)
        .build()
        .unwrap();
    let alloc_bytes = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path).unwrap().blocks() * 512
    };
    let blk = Layout::from_size_align(8 << 20, 4096).unwrap();
    let blocks: Vec<_> = (0..6).map(|_| heap.alloc(blk)).collect();
    assert!(blocks.iter().all(|p| !p.is_null()));
    require_heap_vma(blocks[0], &path);
    std::thread::scope(|s| {
        for (i, &p) in blocks.iter().enumerate() {
            let p = p as usize;
            s.spawn(move || vh_fill(p as *mut u8, 8 << 20, i as u64));
        }
    });
    for (i, &p) in blocks.iter().enumerate() {
        assert!(vh_check(p, 8 << 20, i as u64));
    }
    let full = alloc_bytes();
    let fs_free = statfs(&mnt).f_bfree;
    assert!(
        full >= 48 << 20,
        "heap file has only {full} bytes allocated"
    );
    for &p in &blocks[..5] {
        // SAFETY: allocated above with `blk`, freed once.
        unsafe { heap.dealloc(p, blk) };
    }
    let after = alloc_bytes();
    let fs_free_after = statfs(&mnt).f_bfree;
    println!(
        "heap file: {} MiB allocated with 48 MiB of blocks in use, {} MiB after freeing 40 MiB; \
         file system free blocks {fs_free} -> {fs_free_after}",
        full >> 20,
        after >> 20
    );
    assert!(
        after + (32 << 20) <= full,
        "the heap file kept its blocks: {full} bytes allocated before freeing 40 MiB, {after} after"
    );
    assert!(
        fs_free_after > fs_free,
        "no blocks returned to the file system"
    );
    assert!(
        vh_check(blocks[5], 8 << 20, 5),
        "the live block was damaged"
    );
    // the punched space is reused, zeroed without being written, and is DAX memory again
    let z: Vec<_> = (0..4).map(|_| heap.alloc_zeroed(blk)).collect();
    for &p in &z {
        assert!(!p.is_null());
        assert!(all_zero(p, 8 << 20), "punched memory not zero");
        vh_fill(p, 8 << 20, 9);
    }
    // of the 56 MiB free, only the 16 MiB never written (allocated by fallocate) were not
    // punched: at least 16 of the 32 MiB written now are allocated anew (1 MiB of slack: ext4
    // counts its extent tree blocks in st_blocks too)
    let refilled = alloc_bytes();
    assert!(
        refilled + (1 << 20) >= after + (16 << 20),
        "reused pages not allocated again: {after} -> {refilled} bytes"
    );
    for p in z.into_iter().chain([blocks[5]]) {
        // SAFETY: allocated above with `blk`, freed once.
        unsafe { heap.dealloc(p, blk) };
    }
    heap.core().check().unwrap();
    vh_require_empty(&heap, 0);
    drop(heap);
    std::fs::remove_file(&path).unwrap();
}

/// (g) A volatile heap on a device-DAX device, used whole: the memory is the `/dev/daxN.M`
/// mapping; the device is first filled with garbage (as a used device would be), and zeroed
/// allocations are still zero; the same three-thread workload as on the file; when the device is
/// full, allocations return null (no growth, no crash) and the space is usable again after the
/// frees; `check` passes and `in_use` goes back to zero.
#[test]
#[ignore = "needs a DAX guest: tools/daxvm/guest-tests.sh"]
fn devdax_volatile_heap() {
    let dev = devdax_device();
    // a used device: garbage everywhere
    let t0 = Instant::now();
    let dev_len = {
        let m = Mapping::open(&dev, &MapOptions::new().require_dax(true)).unwrap();
        assert_eq!(m.kind(), MapKind::DevDax);
        // SAFETY: the whole mapping is ours; nothing else uses the device now.
        unsafe { std::ptr::write_bytes(m.as_ptr(), 0xA5, m.len()) };
        m.len() as u64
    };
    println!(
        "{}: {dev_len} bytes filled with 0xA5 in {:.1} s",
        dev.display(),
        t0.elapsed().as_secs_f64()
    );
    let heap = VolatileHeap::builder().device(&dev).build().unwrap();
    let mapped = heap.stats().mapped;
    assert!(
        mapped <= dev_len && mapped + (4 << 20) >= dev_len,
        "heap maps {mapped} bytes of a {dev_len}-byte device"
    );
    println!("heap on {}: {}", dev.display(), heap.stats());
    let l = Layout::from_size_align(64, 8).unwrap();
    let first = heap.alloc_zeroed(l);
    assert!(!first.is_null() && heap.owns(first) && all_zero(first, 64));
    let flags = require_heap_vma(first, &dev);
    println!("devdax heap VmFlags {}", flags.join(" "));

    // fresh memory of a used device: zeroed allocations must still be zero
    let big = Layout::from_size_align(16 << 20, 4096).unwrap();
    let p = heap.alloc_zeroed(big);
    assert!(!p.is_null());
    assert!(
        all_zero(p, 16 << 20),
        "alloc_zeroed on a fresh device heap returned the device's old contents"
    );
    // SAFETY: allocated above with `big`.
    unsafe { heap.dealloc(p, big) };

    let large = [3 << 20, 5 << 20, 4 << 20, 6 << 20, 3 << 20, 4 << 20];
    let after = vh_workload(&heap, 20_000, &large);
    assert_eq!(after, mapped, "a device-DAX heap cannot grow");
    // SAFETY: allocated above with `l`.
    unsafe { heap.dealloc(first, l) };
    vh_require_empty(&heap, 0);

    // Fill the device: 4 MiB blocks until null (bounded), then small blocks until null.
    let blk = Layout::from_size_align(4 << 20, 4096).unwrap();
    let bound = (dev_len / (4 << 20)) as usize + 8;
    let mut blocks = Vec::new();
    while blocks.len() < bound {
        let p = heap.alloc(blk);
        if p.is_null() {
            break;
        }
        assert!(heap.owns(p) && heap.owns(p.wrapping_add((4 << 20) - 1)));
        // SAFETY: fresh 4 MiB block: first and last page touched.
        unsafe {
            *p = blocks.len() as u8;
            *p.add((4 << 20) - 1) = !(blocks.len() as u8);
        }
        blocks.push(p);
    }
    assert!(
        blocks.len() < bound,
        "{} blocks of 4 MiB from a {dev_len}-byte device and still no null",
        blocks.len()
    );
    assert!(
        blocks.len() as u64 * (4 << 20) + (16 << 20) >= dev_len,
        "only {} blocks of 4 MiB from a {dev_len}-byte device",
        blocks.len()
    );
    let small = Layout::from_size_align(4096, 8).unwrap();
    let small_bound = (16 << 20) / 4096 + 64;
    let mut smalls = Vec::new();
    while smalls.len() < small_bound {
        let p = heap.alloc(small);
        if p.is_null() {
            break;
        }
        smalls.push(p);
    }
    assert!(smalls.len() < small_bound, "small allocations never failed");
    // more of everything: null, the heap stays consistent
    assert!(heap.alloc(blk).is_null());
    assert!(heap
        .alloc_zeroed(Layout::from_size_align(1 << 20, 64).unwrap())
        .is_null());
    assert!(heap
        .alloc(Layout::from_size_align(2 * dev_len as usize, 4096).unwrap())
        .is_null());
    {
        let mut v: HeapVec<u64> = HeapVec::new_in(&heap);
        assert!(v.try_reserve(64 << 20).is_err());
    }
    println!(
        "device full after {} blocks of 4 MiB and {} of 4 KiB: {}",
        blocks.len(),
        smalls.len(),
        heap.stats()
    );
    heap.core().check().unwrap();
    for (i, &p) in blocks.iter().enumerate() {
        // SAFETY: live 4 MiB blocks.
        unsafe {
            assert_eq!(*p, i as u8);
            assert_eq!(*p.add((4 << 20) - 1), !(i as u8));
        }
    }
    for p in smalls {
        // SAFETY: allocated above with `small`, freed once.
        unsafe { heap.dealloc(p, small) };
    }
    for p in blocks {
        // SAFETY: allocated above with `blk`, freed once.
        unsafe { heap.dealloc(p, blk) };
    }
    heap.core().check().unwrap();
    vh_require_empty(&heap, 0);
    // the space is usable again, and memory that held data comes back zeroed
    let z = heap.alloc_zeroed(big);
    assert!(!z.is_null(), "no 16 MiB after freeing everything");
    assert!(
        all_zero(z, 16 << 20),
        "zeroed reuse of freed device memory is not zero"
    );
    // SAFETY: allocated above with `big`.
    unsafe { heap.dealloc(z, big) };
    heap.core().check().unwrap();
    vh_require_empty(&heap, 0);
}
