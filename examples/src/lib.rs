//! Example programs built on pmem-alloc. The library part holds the memcached-compatible cache
//! ([`memcache`]) and the Redis-compatible server ([`resp`]) so that their tests and benchmarks
//! can drive them directly.

pub mod memcache;
pub mod resp;
