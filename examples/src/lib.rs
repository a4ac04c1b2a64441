//! Example programs built on pmem-alloc. The library part holds the memcached-compatible cache
//! ([`memcache`]) so that its tests and benchmarks can drive it directly.

pub mod memcache;
