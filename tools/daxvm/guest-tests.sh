#!/bin/bash
# guest-tests.sh - build pmem-alloc's DAX guest tests (pmem-alloc/tests/dax_guest.rs) and run
# them inside the QEMU guest, one process per test (--ignored --exact NAME --test-threads=1).
#
# usage: guest-tests.sh [--verbose]
#   --verbose   stream the guest consoles (default: show them only for failed tests)
#
# Boots (each a fresh or reused NVDIMM image in a temporary directory):
#   1. fsdax  (--fresh): every guest test not listed below, fsdax_file_is_sync_dax once per
#             PMEM_ALLOC_FLUSH method, then phase "write" of power_failure_keeps_persisted_data,
#             whose READY line makes the host SIGKILL qemu ("power failure");
#   -         host: the marker is in the image file;
#   2. fsdax  (same image, not re-made: ext4 replays its journal): phase "check" of the
#             power-failure test, and fsdax_file_is_sync_dax again on the recovered file system;
#   3. devdax (--fresh --setup none, another image): devdax_device_maps_as_devdax creates a
#             devdax namespace with ndctl and maps /dev/daxN.M.
# Ends with "N passed, N failed"; exit code 0 only if nothing failed (1 otherwise, 2 when the
# build or the guest could not be made). Honours CARGO_TARGET_DIR, DAXVM_DIR, CARGO.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
verbose=0
case ${1:-} in
    --verbose | -v) verbose=1 ;;
    "") ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
esac
BOOT_TIMEOUT=${DAXVM_BOOT_TIMEOUT:-240}
FLUSH_METHODS="clwb clflushopt clflush"
POWER_FAIL_RE='^DAXVM-POWER-FAIL-NOW'
t_start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pmem-daxvm-tests.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log() { echo "[guest-tests] $*"; }

# ------------------------------------------------------------------ build
log "building the test binary"
t0=$SECONDS
(cd "$ROOT" && "${CARGO:-cargo}" test -p pmem-alloc --test dax_guest --no-run --message-format=json \
    > "$tmp/build.json" 2> "$tmp/build.err") || { cat "$tmp/build.err"; log "build failed"; exit 2; }
bin=$(grep '"reason":"compiler-artifact"' "$tmp/build.json" | grep '"name":"dax_guest"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then log "no dax_guest executable in cargo's output"; exit 2; fi
log "built $bin ($((SECONDS - t0)) s)"
# the binary must list its guest tests on the host without running them
tests=$("$bin" --list --ignored 2>/dev/null | sed -n 's/: test$//p')
[ -n "$tests" ] || { log "$bin lists no ignored tests"; exit 2; }

log "making the guest"
t0=$SECONDS
"$HERE/make-vm.sh" || { log "make-vm.sh failed"; exit 2; }
log "guest ready ($((SECONDS - t0)) s)"

# ------------------------------------------------------------------ helpers
pass=0 fail=0
result() { # STATUS NAME DETAIL
    if [ "$1" = PASS ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
    printf '%s %s%s\n' "$1" "$2" "${3:+ ($3)}"
}
has_test() { grep -qx "$1" <<<"$tests"; }

# boot LABEL RUN-IN-VM-OPTIONS... -- SPEC...: one guest boot running guest-run.sh SPEC...;
# sets boot_rc and boot_log
nboot=0
boot() {
    local label=$1 opts=() t0=$SECONDS
    shift
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    nboot=$((nboot + 1))
    boot_log=$tmp/boot$nboot.log
    log "boot $nboot: $label"
    if [ $verbose = 1 ]; then
        "$HERE/run-in-vm.sh" --timeout "$BOOT_TIMEOUT" "${opts[@]}" --file "$bin" \
            "$HERE/guest-run.sh" "$(basename "$bin")" "$@" 2>&1 | tee "$boot_log"
    else
        "$HERE/run-in-vm.sh" --timeout "$BOOT_TIMEOUT" "${opts[@]}" --file "$bin" \
            "$HERE/guest-run.sh" "$(basename "$bin")" "$@" > "$boot_log" 2>&1
    fi
    boot_rc=${PIPESTATUS[0]}
    log "boot $nboot: run-in-vm.sh exit $boot_rc, $((SECONDS - t0)) s" \
        "($(grep -o 'qemu ended.*' "$boot_log" | tail -n1))"
}

# the console lines of one spec (from its START line to its RESULT line or the end)
excerpt() {
    awk -v s="$1" '$0 == "GUEST-TEST-START " s {on = 1} on {print "    | " $0}
        on && index($0, "GUEST-RESULT " s " ") == 1 {exit}' "$boot_log" | tail -n 60
}

# record the results of SPEC... from the last boot's console
collect() {
    local spec r
    for spec in "$@"; do
        r=$(grep -F "GUEST-RESULT $spec " "$boot_log" | tail -n1)
        if [ -z "$r" ]; then
            result FAIL "$spec" "no result; run-in-vm.sh exit $boot_rc"
            excerpt "$spec"
            [ -n "$(excerpt "$spec")" ] || tail -n 30 "$boot_log" | sed 's/^/    | /'
        elif [ "$(cut -d' ' -f3 <<<"$r")" = 0 ]; then
            result PASS "$spec" "$(cut -d' ' -f4 <<<"$r") s in the guest"
        else
            result FAIL "$spec" "exit $(cut -d' ' -f3 <<<"$r")"
            [ $verbose = 1 ] || excerpt "$spec"
        fi
    done
}

# ------------------------------------------------------------------ boot 1: fsdax + power failure (write)
PF=power_failure_keeps_persisted_data
DD=devdax_device_maps_as_devdax
SD=fsdax_file_is_sync_dax
specs=()
for t in $tests; do
    case $t in "$PF" | "$DD") ;; *) specs+=("$t") ;; esac
done
if has_test $SD; then
    for m in $FLUSH_METHODS; do specs+=("$SD@PMEM_ALLOC_FLUSH=$m"); done
fi
marker="DAXVM-MARKER-$$-$RANDOM$RANDOM"
pf_write="$PF@DAXVM_PHASE=write"
pf_check="$PF@DAXVM_PHASE=check"
img=$tmp/fsdax.img
if has_test $PF; then
    boot "fsdax (fresh), ${#specs[@]} tests, then the power-failure write phase" \
        --img "$img" --fresh --env "DAXVM_MARKER=$marker" --kill-on "$POWER_FAIL_RE" -- \
        "${specs[@]}" "$pf_write"
else
    boot "fsdax (fresh), ${#specs[@]} tests" --img "$img" --fresh -- "${specs[@]}"
fi
collect "${specs[@]}"

if has_test $PF; then
    if [ "$boot_rc" = 137 ] && grep -q "$POWER_FAIL_RE" "$boot_log"; then
        result PASS "$PF (write phase, then qemu SIGKILLed)" \
            "$(grep -o 'killed qemu.* after start' "$boot_log")"
    else
        result FAIL "$PF (write phase)" "run-in-vm.sh exit $boot_rc, expected 137 after the kill"
        excerpt "$pf_write"
    fi
    # host side: the marker, persisted at 3 offsets, is in the backing file right after the kill
    n=$(grep -a -o -F "$marker" "$img" 2>/dev/null | wc -l)
    if [ "$n" -ge 3 ]; then
        result PASS "$PF (host: marker in the image file after the kill)" "$n copies"
    else
        result FAIL "$PF (host: marker in the image file after the kill)" "not found"
    fi

    # -------------------------------------------------------------- boot 2: after the power failure
    specs2=("$pf_check")
    has_test $SD && specs2+=("$SD")
    boot "fsdax (same image, after the power failure)" --img "$img" --env "DAXVM_MARKER=$marker" \
        -- "${specs2[@]}"
    grep -E '^(DAXVM: mounted|EXT4-fs.*recover)' "$boot_log" | sed 's/^/    /'
    collect "${specs2[@]}"
fi
rm -f "$img" "$img.lock"

# ------------------------------------------------------------------ boot 3: devdax
if has_test $DD; then
    img=$tmp/devdax.img
    boot "devdax (fresh, --setup none)" --img "$img" --fresh --setup none -- "$DD"
    collect "$DD"
    rm -f "$img" "$img.lock"
fi

log "total $((SECONDS - t_start)) s"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
