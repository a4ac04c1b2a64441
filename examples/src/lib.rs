//! Example programs built on pmem-alloc. The library part holds the memcached-compatible cache
//! ([`memcache`]) and the Redis-compatible server ([`resp`]) so that their tests and benchmarks
//! can drive them directly; [`net`] is the TCP server machinery they share.

pub mod memcache;
pub mod net;
pub mod resp;
