//! C ABI for `pmem-alloc` (work in progress: the exports arrive with the C ABI issue).
//!
//! Unlike most `-sys` crates, this one *exports* Rust to C: it builds a shared and a static
//! library with the `pma_` symbol prefix.
