//! `pmem-redis`: a Redis-compatible (RESP2) key-value server. See `pmem-redis --help` and
//! docs/redis.md.

fn main() -> std::process::ExitCode {
    pmem_examples::resp::server::main_cli()
}
