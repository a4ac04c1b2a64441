//! `pmem-memcached`: a memcached-compatible server whose items live in a persistent-memory
//! pool and survive restarts and `kill -9`. See `pmem-memcached --help` and docs/memcached.md.

fn main() -> std::process::ExitCode {
    pmem_examples::memcache::server::main_cli()
}
