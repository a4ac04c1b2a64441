#!/bin/bash
# install-deps.sh - install the Debian packages the build, the tests and the benchmarks need.
# Idempotent: only missing packages are installed (needs root on a fresh machine).
#   tools/install-deps.sh            packages for the test suite
#   tools/install-deps.sh --bench    also the peers used by the comparison benchmarks
set -euo pipefail
pkgs=(
    build-essential pkg-config ca-certificates
    # the QEMU guest with an emulated NVDIMM (tools/daxvm)
    qemu-system-x86 busybox-static cpio kmod ndctl daxctl e2fsprogs xfsprogs lvm2
    # test helpers; libpmem for building the benchmark peer
    util-linux procps libpmem-dev
    # the programs the example cache and the preload library are tested with, and valgrind
    memcached libmemcached-tools redis-server redis-tools valgrind
)
if [ "${1:-}" = "--bench" ]; then
    pkgs+=(libpmem-dev libpmem2-dev libpmemobj-dev pmdk-tools libmemkind-dev libjemalloc-dev
           libmimalloc-dev)
fi
need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    echo "install-deps: installing ${need[*]}" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: not root; install these packages first: ${need[*]}" >&2
        exit 1
    fi
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
