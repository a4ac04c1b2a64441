#!/bin/bash
# guest-test.sh - run the pmem-csi conformance suite inside the DAX guest (tools/daxvm) on a
# real emulated NVDIMM: real ndctl namespaces, real LVM, ext4/xfs mounted -o dax, MAP_SYNC.
#
# usage: pmem-csi/ci/guest-test.sh [MODE...]      (default: lvm direct)
# Needs root (the guest builder installs Debian packages: see tools/daxvm/README.md).
# Prints the guest's output; each mode ends with "N passed, N failed". Exit 0 iff all passed.
set -euo pipefail
cd "$(dirname "$0")/../.."
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(lvm direct)

# Build the driver and the conformance test binary; find both in cargo's JSON messages.
json=$(cargo test -p pmem-csi --test conformance --no-run --message-format=json)
conformance=$(grep -o '"executable":"[^"]*/conformance-[^"]*"' <<<"$json" | tail -1 | cut -d'"' -f4)
driver=$(grep -o '"executable":"[^"]*/pmem-csi"' <<<"$json" | tail -1 | cut -d'"' -f4)
[ -x "$conformance" ] && [ -x "$driver" ] || { echo "guest-test: build outputs not found" >&2; exit 2; }

tools/daxvm/make-vm.sh >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$conformance" "$work/conformance"
cp "$driver" "$work/pmem-csi"
# A fresh 2 GiB DIMM per run (xfs needs 300 MB volumes; modes share it one after the other).
tools/daxvm/run-in-vm.sh --setup none --img "$work/nv.img" --size 2G \
    --file "$work/pmem-csi" --file "$work/conformance" --timeout 1500 \
    pmem-csi/ci/guest-run.sh "${modes[@]}"
