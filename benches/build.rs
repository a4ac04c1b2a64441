//! Links libpmem only when the `libpmem` feature is on, so the workspace builds without it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBPMEM_LIB_DIR");
    let mut version = String::from("(version unknown)");
    if std::env::var_os("CARGO_FEATURE_LIBPMEM").is_some() {
        // An optional non-standard location (e.g. a PMDK built from source).
        if let Some(dir) = std::env::var_os("LIBPMEM_LIB_DIR") {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        }
        println!("cargo:rustc-link-lib=dylib=pmem");
        // The version is only informational (for the report); pkg-config may be missing.
        if let Ok(out) = std::process::Command::new("pkg-config")
            .args(["--modversion", "libpmem"])
            .output()
        {
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !v.is_empty() {
                version = v;
            }
        }
    }
    println!("cargo:rustc-env=PMEM_BENCHES_LIBPMEM_VERSION={version}");
}
