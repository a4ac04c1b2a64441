#!/bin/bash
# test-all.sh - the whole test suite, as CI runs it. Ends with a line "total: N passed, N failed".
#
# Phases: formatting and clippy; the workspace tests (unit, integration, doc); the pmem-alloc
# tests once per flush path (PMEM_ALLOC_FLUSH=clwb|clflushopt|clflush|msync|none); the tests
# inside a QEMU guest with an emulated NVDIMM (real MAP_SYNC, devdax, power failure); the CSI
# conformance suite in the guest (real ndctl, LVM) when present. With a nightly toolchain also
# AddressSanitizer over the heap tests and a bounded fuzzing run (tools/fuzz.sh).
# Env: SKIP_GUEST=1 skips the guest phases (they need qemu and ~1-3 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh || exit 1
# The tests that drive real programs (memcached, memccapable, redis, valgrind) skip when a tool is
# missing only outside CI; the suite installs them above, so a missing one is a failure here.
export CI="${CI:-true}"
log=$(mktemp /tmp/pmem-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT
failed_phases=()

phase() { # name, command...
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@" 2>&1 | tee -a "$log"; then
        echo "=== $name: ok ($((SECONDS - t0)) s)"
    else
        echo "=== $name: FAILED ($((SECONDS - t0)) s)"
        failed_phases+=("$name")
    fi
}

phase fmt cargo fmt --all -- --check
phase clippy cargo clippy --workspace --all-targets --locked -- -D warnings
phase doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# the benchmarks compile and link (with the libpmem peer); the rest is built by the tests
phase build-benches cargo build -p pmem-benches --all-targets --features libpmem --locked
# includes the example cache (crash sweep, kill -9 loop, memccapable), the C ABI tests (C programs,
# valgrind, kill -9, pkg-config) and the LD_PRELOAD acceptance tests (memcached + memccapable,
# redis-server + redis-benchmark + BGSAVE)
phase workspace-tests cargo test --workspace --locked
# The tests whose behaviour depends on the flush path, once per path (the simulator-based tests
# do not depend on it and run once above).
path_tests=(--lib --test flush_paths --test memops --test map_errors --test pool_basic --test kill_pool)
for m in clwb clflushopt clflush msync none; do
    phase "flush-$m" env PMEM_ALLOC_FLUSH=$m PMEM_ALLOC_FORCE_PMEM=1 cargo test -p pmem-alloc --locked "${path_tests[@]}"
done
phase "flush-default-page-cache" env -u PMEM_ALLOC_FORCE_PMEM cargo test -p pmem-alloc --locked "${path_tests[@]}"
# Heavy suites, with their counts printed: crash sweeps (>= 10,000 crash images each for pools
# and transactions, >= 5,000 for staged writes), process kills
# (200), corruption (10,000 cases).
phase heavy cargo test -p pmem-alloc --release --locked --test crash_pool --test crash_tx --test crash_staged --test crash_collections --test kill_pool --test corrupt_pool -- --ignored --nocapture --test-threads=1
# the RESP keyspace's larger crash sweep (thousands of images over every command kind)
phase heavy-redis cargo test -p pmem-examples --release --locked --test resp_crash -- --ignored --nocapture
# loom models of the cross-thread structures (the lock source compiled against loom atomics)
phase loom env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p pmem-alloc --release --locked --test loom_lock --test loom_gate
# AddressSanitizer over the multi-threaded heap tests (needs a nightly toolchain; skipped, and
# said so, where there is none)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    phase asan env RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
        cargo +nightly test -p pmem-alloc --target x86_64-unknown-linux-gnu --locked \
        --test volatile_heap --test global_alloc --test kill_pool
else
    echo "=== asan: skipped (no nightly toolchain on this machine)"
fi
# Coverage-guided fuzzing of the protocol parsers and of opening corrupted pools (fuzz/): every
# target for 15 s: about 1 minute, 3 with a fresh build (nightly; skipped, and said so, without)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    phase fuzz env FUZZ_TARGET_DIR=target/fuzz tools/fuzz.sh 15
else
    echo "=== fuzz: skipped (no nightly toolchain on this machine)"
fi
if [ "${SKIP_GUEST:-0}" != 1 ]; then
    [ -x tools/daxvm/guest-tests.sh ] && phase guest-dax tools/daxvm/guest-tests.sh
    [ -x pmem-csi/ci/guest-test.sh ] && phase guest-csi pmem-csi/ci/guest-test.sh
fi

# Sum every runner's closing line: cargo's "test result: ok. N passed; M failed" and the
# project's own "N passed, M failed" lines.
read -r pass fail < <(awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
    /^[0-9]+ passed, [0-9]+ failed/ { p += $1; f += $3 }
    END { print p + 0, f + 0 }' "$log")
if ((${#failed_phases[@]})); then
    echo "failed phases: ${failed_phases[*]}"
    fail=$((fail > 0 ? fail : ${#failed_phases[@]}))
fi
echo "total: $pass passed, $fail failed"
[ "$fail" = 0 ] && ((${#failed_phases[@]} == 0))
