//! A memcached-compatible cache whose items, hash index and LRU live in a persistent pool.
//!
//! Layers: [`store`] (the storage interface), [`pstore`] (the persistent store on a
//! `pmem_alloc::Pool`), [`memstore`] (a reference model in DRAM, used by tests),
//! [`proto`] (text and meta protocol parser), [`exec`] (command execution against a store),
//! [`server`] (the TCP server). See docs/memcached.md.

pub mod exec;
pub mod memstore;
pub mod proto;
pub mod pstore;
pub mod server;
pub mod store;
