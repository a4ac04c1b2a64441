#!/usr/bin/env bash
# Builds the comparison with libpmem, runs it for every CPU flush instruction this machine
# has, and regenerates BENCHMARKS.md and its plots. Run from anywhere inside the repository:
#
#   benches/run-compare.sh [extra compare options, e.g. --trials 51]
#
# Needs libpmem (Debian: libpmem-dev) and a tmpfs at /dev/shm. Results go to
# docs/benchmarks/data/, plots to docs/benchmarks/, the report to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p pmem-benches --features libpmem --bins
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release"

data=docs/benchmarks/data
mkdir -p "$data"
rm -f "$data"/compare-*.json "$data"/compare-*.csv

flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
for m in clwb clflushopt clflush; do
    if [[ " $flags " == *" $m "* ]]; then
        # compare re-executes itself with the environment libpmem needs for $m.
        "$bin/compare" --flush "$m" --out "$data" "$@"
    fi
done
"$bin/report" --data "$data" --out BENCHMARKS.md --plots docs/benchmarks
