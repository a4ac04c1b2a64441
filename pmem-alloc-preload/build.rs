//! Passes the target and host triples to the tests, which compile C programs with the `cc`
//! crate (that needs them outside build scripts).
fn main() {
    for k in ["TARGET", "HOST"] {
        let v = std::env::var(k).unwrap_or_default();
        println!("cargo:rustc-env=PMA_BUILD_{k}={v}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
