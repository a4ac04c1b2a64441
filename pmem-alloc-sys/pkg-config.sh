#!/bin/sh
# Writes pmem-alloc.pc for a library directory and an include directory to stdout.
#   pmem-alloc-sys/pkg-config.sh LIBDIR INCLUDEDIR > DIR/pmem-alloc.pc
# LIBDIR holds libpmem_alloc_sys.so / .a (e.g. target/release or /usr/local/lib), INCLUDEDIR
# holds pmem_alloc.h (pmem-alloc-sys/include or /usr/local/include).
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 LIBDIR INCLUDEDIR > pmem-alloc.pc" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n1)
abs() { (cd "$1" && pwd); }
sed -e "s|@LIBDIR@|$(abs "$1")|" -e "s|@INCLUDEDIR@|$(abs "$2")|" -e "s|@VERSION@|$version|" \
    "$here/pmem-alloc.pc.in"
