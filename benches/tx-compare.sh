#!/bin/bash
# tx-compare.sh - transaction cost: pmem-alloc's Pool::transaction against PMDK's libpmemobj
# transactions (pmemobj_tx_begin + pmemobj_tx_add_range_direct x N + modify + commit + end) for
# N = 1, 4 and 16 ranges of 64 B, interleaved in one process.
#
#   benches/tx-compare.sh [tx_compare options, e.g. --trials 31 --txs 20000]
#
# Builds tx_compare (release) and writes docs/benchmarks/tx.md (command, machine, table, fence
# counts, verdict against the 5x goal). Pool files go to /dev/shm; PMEM_IS_PMEM_FORCE=1 and
# PMEM_ALLOC_FORCE_PMEM=1 make both libraries flush with CPU instructions there. libpmemobj
# comes from Debian (tools/install-deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p | grep -q libpmemobj.so.1; then
    echo "tx-compare: libpmemobj.so.1 is missing: run tools/install-deps.sh --bench" >&2
    exit 1
fi

cargo build -p pmem-benches --release --locked --bin tx_compare
bin="${CARGO_TARGET_DIR:-target}/release/tx_compare"

ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- pmem-alloc benches 2>/dev/null || rev+="+modified"
versions="pmem-alloc $rev, libpmemobj $(ver libpmemobj1), $(date -u '+%Y-%m-%d %H:%M') UTC"

export PMEM_ALLOC_FORCE_PMEM=1 PMEM_IS_PMEM_FORCE=1
mkdir -p docs/benchmarks
"$bin" --dir /dev/shm --md docs/benchmarks/tx.md \
    --command "benches/tx-compare.sh${*:+ $*}" --versions "$versions" "$@"
echo "tx-compare: wrote docs/benchmarks/tx.md" >&2
