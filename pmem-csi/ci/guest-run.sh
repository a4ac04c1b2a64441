#!/bin/sh
# guest-run.sh - runs INSIDE the DAX guest (busybox sh): prepares the emulated NVDIMM and runs
# the pmem-csi conformance suite against the real driver in each requested device mode.
# Started by guest-test.sh; expects /test/pmem-csi and /test/conformance next to it.
# usage: guest-run.sh MODE...   (MODE: lvm | direct)
set -u
cd /test || exit 2
failed=0
# The metrics endpoint listens on loopback, which the guest does not bring up by itself.
ifconfig lo 127.0.0.1 up 2>/dev/null || ip link set lo up
reset_pmem() {
    # Remove what a previous mode left, then give the DIMM an empty label area so that
    # namespaces can be created (a new QEMU DIMM starts label-less with one raw namespace).
    for vg in $(vgs --noheadings -o vg_name @pmem-csi 2>/dev/null); do
        vgremove --yes --force "$vg" >/dev/null 2>&1
    done
    ndctl disable-region all >/dev/null 2>&1
    ndctl init-labels -f all >/dev/null 2>&1
    ndctl enable-region all >/dev/null 2>&1
    ndctl list -R
}
for mode in "$@"; do
    echo "GUEST: ===== pmem-csi conformance, $mode mode ====="
    reset_pmem
    PMEM_CSI_TEST_MODE=$mode PMEM_CSI_BIN=/test/pmem-csi ./conformance
    rc=$?
    echo "GUEST: $mode mode exit $rc"
    [ "$rc" -eq 0 ] || failed=1
done
exit $failed
