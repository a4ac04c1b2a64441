//! A C program run under the preload library: every interposed entry point (standard and
//! jemalloc's), blocks inside the heap file's mapping, threads exiting, fork.

mod common;

use common::*;
use std::process::Command;

fn compile(out: &std::path::Path) {
    let compiler = cc::Build::new()
        .target(env!("PMA_BUILD_TARGET"))
        .host(env!("PMA_BUILD_HOST"))
        .opt_level(1)
        .cargo_metadata(false)
        .get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/c/preload_test.c"
        ))
        .arg("-ldl")
        .arg("-o")
        .arg(out);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn every_entry_point_threads_and_fork_under_the_preload() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("preload_test");
    compile(&exe);
    let heap = dir.path().join("test.heap");
    let o = run_bounded(
        Command::new(&exe)
            .env("LD_PRELOAD", preload_lib())
            .env("PMEM_HEAP_FILE", &heap)
            .env("PMEM_HEAP_SIZE", "16M")
            .arg(&heap),
        120,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "preload_test failed:\n{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "all ok\n", "{err}");
}

#[test]
fn an_unusable_heap_file_falls_back_to_anonymous_memory_with_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bounded(
        Command::new("/bin/sh")
            .env("LD_PRELOAD", preload_lib())
            .env("PMEM_HEAP_FILE", dir.path().join("no/such/dir/heap"))
            .args(["-c", "echo hello | cat"]),
        30,
    );
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("using anonymous memory"));
}
