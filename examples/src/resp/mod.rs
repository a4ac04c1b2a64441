//! A Redis-compatible (RESP2) key-value server over a pluggable storage backend.
//!
//! Layers: [`db`] (the storage interface), [`memdb`] (the DRAM reference backend), [`pdb`]
//! (the persistent backend: the keyspace in a pool),
//! [`proto`] (request parser and reply encoder), [`exec`] (command execution against a
//! backend), [`server`] (the TCP server of the `pmem-redis` binary). See docs/redis.md.

pub mod db;
pub mod exec;
pub mod memdb;
pub mod pdb;
pub mod proto;
pub mod server;
