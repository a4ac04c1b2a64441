//! Real C programs against the C ABI, compiled with the system C compiler (found by the `cc`
//! crate) and linked to the shared and to the static library that `cargo test` built: the API
//! test, the same under valgrind, and the persistent-list example killed with SIGKILL mid-loop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Where `cargo test` put libpmem_alloc_sys.{so,a} (next to this test executable).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    for d in [deps.clone(), deps.parent().unwrap().to_path_buf()] {
        if d.join("libpmem_alloc_sys.so").exists() && d.join("libpmem_alloc_sys.a").exists() {
            return d;
        }
    }
    panic!("libpmem_alloc_sys.so/.a not found near {}", deps.display());
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Shared,
    Static,
}

/// Compiles `src` (relative to the crate) into `out` with warnings as errors.
fn compile(src: &str, out: &Path, link: Link) {
    let compiler = cc::Build::new()
        .target(env!("PMA_BUILD_TARGET"))
        .host(env!("PMA_BUILD_HOST"))
        .opt_level(1)
        .debug(true)
        .cargo_metadata(false)
        .get_compiler();
    let lib = lib_dir();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{MANIFEST}/include"))
        .arg(format!("{MANIFEST}/{src}"))
        .arg("-o")
        .arg(out);
    match link {
        Link::Shared => {
            cmd.arg(format!("-L{}", lib.display()))
                .arg("-lpmem_alloc_sys")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            cmd.arg(lib.join("libpmem_alloc_sys.a")).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
            ]);
        }
    }
    let o = cmd.output().expect("C compiler");
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tool on PATH; missing: skip (`None`) unless `CI` is set (and not `0` or `false`).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(!ci, "{name} is not installed (CI is set)");
    eprintln!("SKIP: {name} is not installed");
    None
}

/// Runs a compiled program. `cargo test` puts target/<profile>/ on LD_LIBRARY_PATH, which
/// outranks the programs' run path and may hold an older library from `cargo build`: point it
/// at the library this test was built with.
fn run(cmd: &mut Command) -> Output {
    let o = cmd.env("LD_LIBRARY_PATH", lib_dir()).output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn api_test(link: Link) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("api_test");
    compile("tests/c/api_test.c", &exe, link);
    let o = run(Command::new(&exe).arg(dir.path()));
    assert!(o.status.success(), "api_test ({link:?}) failed");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "all ok\n");
}

#[test]
fn c_api_test_against_the_shared_library() {
    api_test(Link::Shared);
}

#[test]
fn c_api_test_against_the_static_library() {
    api_test(Link::Static);
}

#[test]
fn c_api_test_is_clean_under_valgrind() {
    let Some(valgrind) = tool("valgrind") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("api_test");
    compile("tests/c/api_test.c", &exe, Link::Shared);
    // valgrind's address space is smaller than the default 64 GiB growth reservation
    let o = run(Command::new(valgrind)
        .env("PMA_POOL_RESERVE", "1G")
        .args([
            "--error-exitcode=99",
            "--errors-for-leak-kinds=definite",
            "--leak-check=full",
        ])
        .arg(&exe)
        .arg(dir.path())
        .arg("anon-heap-only"));
    assert!(
        o.status.success(),
        "valgrind reported errors ({:?})",
        o.status
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "all ok\n");
}

fn list(exe: &Path, pool: &Path, args: &[&str]) -> String {
    let o = run(Command::new(exe).arg(pool).args(args));
    assert!(o.status.success(), "persistent_list {args:?} failed");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A temporary directory for data on tmpfs when there is one (`msync`, the persist of a pool
/// on a page-cache file, is cheap there), else the default.
fn fast_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

#[test]
fn example_list_survives_kill_9_mid_loop() {
    let dir = tempfile::tempdir().unwrap(); // not /dev/shm: it may be mounted noexec
    let exe = dir.path().join("persistent_list");
    compile("examples/persistent_list.c", &exe, Link::Shared);
    let data = fast_tempdir();
    let pool = data.path().join("list.pool");
    assert_eq!(list(&exe, &pool, &["add", "10"]), "done 10");
    assert_eq!(list(&exe, &pool, &["check"]), "ok 10");
    let mut last = 10;
    for round in 0..3 {
        // a long run, killed with SIGKILL after a few progress lines
        let mut child = Command::new(&exe)
            .env("LD_LIBRARY_PATH", lib_dir())
            .arg(&pool)
            .args(["add", "100000000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let t = Instant::now();
        let mut seen = 0u64;
        for _ in 0..(3 + round) {
            let l = lines.next().expect("no progress line").unwrap();
            seen = l.strip_prefix("count ").unwrap().parse().unwrap();
            assert!(t.elapsed() < Duration::from_secs(60), "too slow");
        }
        // SAFETY: our own child, by its PID.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
        let st = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL),
            "the run ended before the kill"
        );
        let out = list(&exe, &pool, &["check"]);
        let n: u64 = out.strip_prefix("ok ").unwrap().parse().unwrap();
        assert!(
            n >= seen && n > last,
            "after kill -9: {n} nodes, {seen} reported"
        );
        last = n;
    }
    // and it goes on from there
    assert_eq!(
        list(&exe, &pool, &["add", "5"]),
        format!("done {}", last + 5)
    );
    assert_eq!(list(&exe, &pool, &["check"]), format!("ok {}", last + 5));
}

#[test]
fn pkg_config_file_builds_the_example() {
    let Some(pkg_config) = tool("pkg-config") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pc = Command::new(format!("{MANIFEST}/pkg-config.sh"))
        .arg(lib_dir())
        .arg(format!("{MANIFEST}/include"))
        .output()
        .unwrap();
    assert!(pc.status.success());
    std::fs::write(dir.path().join("pmem-alloc.pc"), &pc.stdout).unwrap();
    let flags = Command::new(pkg_config)
        .env("PKG_CONFIG_PATH", dir.path())
        .args(["--cflags", "--libs", "pmem-alloc"])
        .output()
        .unwrap();
    assert!(
        flags.status.success(),
        "pkg-config does not accept the file"
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    assert!(
        flags.contains("-lpmem_alloc_sys") && flags.contains("/include"),
        "{flags}"
    );
    let compiler = cc::Build::new()
        .target(env!("PMA_BUILD_TARGET"))
        .host(env!("PMA_BUILD_HOST"))
        .opt_level(1)
        .cargo_metadata(false)
        .get_compiler();
    let exe = dir.path().join("persistent_list");
    let o = compiler
        .to_command()
        .arg(format!("{MANIFEST}/examples/persistent_list.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pool = dir.path().join("p.pool");
    assert_eq!(list(&exe, &pool, &["add", "3"]), "done 3");
    assert_eq!(list(&exe, &pool, &["check"]), "ok 3");
}
