#!/bin/bash
# alloc-compare.sh - allocator comparison: pmem-alloc's volatile heap and persistent pool against
# glibc, jemalloc, mimalloc, memkind (PMEM kind) and PMDK's libpmemobj, in one process.
#
#   benches/alloc-compare.sh [alloc_compare run options]
#
# Builds alloc_compare (release), runs it with bounded defaults (about 3-5 minutes on 2 cores;
# options such as --trials 5 --run-ms 20 --recovery-trials 1 make it shorter) and writes
#   docs/benchmarks/allocators.md          the report
#   docs/benchmarks/alloc-throughput.svg   its plot
#   docs/benchmarks/data/alloc-results.json  the raw results (every trial)
#   docs/benchmarks/data/alloc-punch-diag.json  a small diagnostic run first: the volatile heap
#                                             with and without hole punching
# Notes in docs/benchmarks/data/alloc-notes.md (hand-written) are appended to the report.
# `alloc_compare run --from-json docs/benchmarks/data/alloc-results.json --md ...` rewrites the
# report without measuring. Heap and pool files go to /dev/shm (tmpfs): the peers' libraries
# come from Debian (tools/install-deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."

for lib in libjemalloc.so.2 libmimalloc.so.2 libmemkind.so.0 libpmemobj.so.1; do
    if ! ldconfig -p | grep -q "$lib"; then
        echo "alloc-compare: $lib is missing: run tools/install-deps.sh --bench" >&2
        exit 1
    fi
done

cargo build -p pmem-benches --release --bin alloc_compare
bin="${CARGO_TARGET_DIR:-target}/release/alloc_compare"

ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
versions="glibc $(ver libc6),jemalloc $(ver libjemalloc2),mimalloc $(ver libmimalloc2.0)"
versions+=",memkind $(ver libmemkind0),libpmemobj $(ver libpmemobj1)"
# the pmem-alloc measured: its commit, marked when the working tree differs from it
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- pmem-alloc 2>/dev/null || rev+="+modified"
versions="pmem-alloc $rev,$versions"

# CPU flushes on the tmpfs mappings for both persistent peers (nothing here is durable).
export PMEM_ALLOC_FORCE_PMEM=1 PMEM_IS_PMEM_FORCE=1

out=docs/benchmarks
mkdir -p "$out/data"
notes=()
[ -f "$out/data/alloc-notes.md" ] && notes=(--notes "$out/data/alloc-notes.md")
date="$(date -u '+%Y-%m-%d %H:%M')"

diag=(--peers "pmem-alloc volatile,pmem-alloc volatile nopunch,pmem-alloc engine,mimalloc"
      --workloads batch-1000x64,threadtest,mix-16..4K,sh6bench --trials 7
      --no-space --no-recovery)
"$bin" run --dir /dev/shm "${diag[@]}" \
    --json "$out/data/alloc-punch-diag.json" --md /dev/null \
    --command "alloc_compare run --peers '${diag[1]}' ${diag[*]:2}" \
    --date "$date" --versions "$versions"

"$bin" run --dir /dev/shm \
    --json "$out/data/alloc-results.json" \
    --md "$out/allocators.md" \
    --svg "$out/alloc-throughput.svg" \
    --diag-json "$out/data/alloc-punch-diag.json" \
    "${notes[@]}" \
    --command "benches/alloc-compare.sh${*:+ $*}" \
    --date "$date" \
    --versions "$versions" \
    "$@"
echo "alloc-compare: wrote $out/allocators.md" >&2
