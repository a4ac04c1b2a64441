//! Benchmarks and peer comparisons for the persistent-memory SDK.
//!
//! - [`peer`]: the peers compared (pmem-alloc, and libpmem with the `libpmem` feature) behind
//!   the [`peer::PersistPeer`] trait, and their registry.
//! - [`measure`]: workloads, the per-operation timing loop and the interleaved trial driver.
//! - [`timer`]: the fenced cycle-counter timer.
//! - [`results`]: the JSON/CSV result files of the `compare` binary.
//! - [`report`] and [`svg`]: BENCHMARKS.md and its plots, made by the `report` binary.
//!
//! `benches/run-compare.sh` builds with the feature, runs `compare` for each flush instruction
//! and then `report`.

pub mod alloc;
#[cfg(feature = "libpmem")]
pub mod ffi;
pub mod measure;
pub mod peer;
pub mod report;
pub mod results;
pub mod svg;
pub mod timer;
