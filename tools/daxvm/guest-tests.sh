#!/bin/bash
# guest-tests.sh - build pmem-alloc's DAX guest tests (pmem-alloc/tests/dax_guest.rs) and run
# them inside the QEMU guest, one process per test (--ignored --exact NAME --test-threads=1).
#
# usage: guest-tests.sh [--verbose] [--only REGEX]
#   --verbose      stream the guest consoles (default: show them only for failed tests)
#   --only REGEX   run only the tests whose name matches REGEX (grep -E)
#
# The tests are listed with `--list --ignored` and sorted by name: `devdax_*` tests run in a
# guest booted with --setup none (they make a devdax namespace), the others on the fsdax mount;
# a test whose name contains `power_failure` runs in two phases (DAXVM_PHASE=write|check). For
# each kind of guest, with its own NVDIMM image in a temporary directory:
#   boot 1 (--fresh): the plain tests (fsdax_file_is_sync_dax also once per PMEM_ALLOC_FLUSH
#          method), then the write phase of the power-failure test, whose READY line makes the
#          host SIGKILL qemu ("power failure"); host: the marker is in the image file;
#   boot 2 (same image, not re-made: ext4 replays its journal): the check phase (and, for
#          fsdax, fsdax_file_is_sync_dax on the recovered file system).
# Ends with "N passed, N failed"; exit code 0 only if nothing failed (1 otherwise, 2 when the
# build or the guest could not be made). Honours CARGO_TARGET_DIR, DAXVM_DIR, CARGO,
# DAXVM_BOOT_TIMEOUT (default 240 s per boot), DAXVM_TEST_TIMEOUT (default 120 s per test),
# DAXVM_IMG_SIZE (default 256M).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
verbose=0 only=""
while [ $# -gt 0 ]; do
    case $1 in
        --verbose | -v) verbose=1; shift ;;
        --only) only=${2:?--only wants a regex}; shift 2 ;;
        *) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2 ;;
    esac
done
BOOT_TIMEOUT=${DAXVM_BOOT_TIMEOUT:-240}   # seconds per boot
TEST_TIMEOUT=${DAXVM_TEST_TIMEOUT:-120}   # seconds per test process in the guest
IMG_SIZE=${DAXVM_IMG_SIZE:-256M}          # NVDIMM images (small: the host greps them)
FLUSH_METHODS="clwb clflushopt clflush fence msync none"
POWER_FAIL_RE='^DAXVM-POWER-FAIL-NOW'
t_start=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pmem-daxvm-tests.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
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
if [ -n "$only" ]; then
    tests=$(grep -E -- "$only" <<<"$tests")
    [ -n "$tests" ] || { log "no test matches --only '$only'"; exit 2; }
fi

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
            --env "DAXVM_TEST_TIMEOUT=$TEST_TIMEOUT" \
            "$HERE/guest-run.sh" "$(basename "$bin")" "$@" 2>&1 | tee "$boot_log"
    else
        "$HERE/run-in-vm.sh" --timeout "$BOOT_TIMEOUT" "${opts[@]}" --file "$bin" \
            --env "DAXVM_TEST_TIMEOUT=$TEST_TIMEOUT" \
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

# suite KIND: the boots of one kind of guest (fsdax or devdax) for the tests in plain[] and the
# two-phase power-failure tests in pf[]. Boot 1 (fresh image) runs plain[] and then the write
# phase of pf[0]; the host kills qemu on its READY line and looks for the marker in the image;
# boot k+1 (same image) runs the check phase of pf[k-1], then the write phase of pf[k], ...;
# the last boot also runs after_crash[] on the recovered image.
suite() {
    local kind=$1 opts=() specs=("${plain[@]}") i=0 t w killed=0
    [ "$kind" = devdax ] && opts=(--setup none)
    local img=$tmp/$kind.img
    local fresh=(--fresh --size "$IMG_SIZE")
    describe() { # the boot's label
        desc=$kind
        [ ${#fresh[@]} -gt 0 ] && desc+=", new image"
        [ ${#opts[@]} -gt 0 ] && desc+=", ${opts[*]}"
        [ "$killed" = 1 ] && desc+=", after the power failure"
        desc+=", ${#specs[@]} test(s)"
    }
    while [ "$i" -lt "${#pf[@]}" ]; do
        t=${pf[$i]}
        w="$t@DAXVM_PHASE=write"
        describe
        boot "$desc, then $t (write phase, killed)" \
            --img "$img" "${fresh[@]}" "${opts[@]}" --env "DAXVM_MARKER=$marker" \
            --kill-on "$POWER_FAIL_RE" -- ${specs[@]+"${specs[@]}"} "$w"
        [ "$killed" = 1 ] && grep '^DAXVM: mounted' "$boot_log" | sed 's/^/    after the kill: /'
        collect ${specs[@]+"${specs[@]}"}
        if [ "$boot_rc" = 137 ] && grep -q "$POWER_FAIL_RE" "$boot_log"; then
            result PASS "$w, then qemu SIGKILLed" "$(grep -o 'killed qemu.* after start' "$boot_log")"
        else
            result FAIL "$w" "run-in-vm.sh exit $boot_rc, expected 137 after the kill"
            excerpt "$w"
        fi
        # host side: the test's marker, persisted at 3 offsets, is in the backing file after the
        # kill (the tests write "$DAXVM_MARKER-<test name>")
        n=$(grep -a -o -F "$marker-$t" "$img" 2>/dev/null | wc -l)
        if [ "$n" -ge 3 ]; then
            result PASS "$t (host: marker in the NVDIMM image file after the kill)" "$n copies"
        else
            result FAIL "$t (host: marker in the NVDIMM image file after the kill)" "$n copies"
        fi
        specs=("$t@DAXVM_PHASE=check")
        fresh=() killed=1 i=$((i + 1))
    done
    [ "$killed" = 1 ] && specs+=(${after_crash[@]+"${after_crash[@]}"})
    if [ ${#specs[@]} -gt 0 ]; then
        describe
        boot "$desc" \
            --img "$img" "${fresh[@]}" "${opts[@]}" --env "DAXVM_MARKER=$marker" -- "${specs[@]}"
        [ "$killed" = 1 ] && grep '^DAXVM: mounted' "$boot_log" | sed 's/^/    after the kill: /'
        collect "${specs[@]}"
    fi
    rm -f "$img" "$img.lock"
}

SD=fsdax_file_is_sync_dax
marker="DAXVM-MARKER-$$-$RANDOM$RANDOM"
for kind in fsdax devdax; do
    plain=() pf=() after_crash=()
    for t in $tests; do
        case $t in devdax_*) [ $kind = devdax ] || continue ;; *) [ $kind = fsdax ] || continue ;; esac
        case $t in *power_failure*) pf+=("$t") ;; *) plain+=("$t") ;; esac
    done
    if [ $kind = fsdax ] && has_test $SD; then
        for m in $FLUSH_METHODS; do plain+=("$SD@PMEM_ALLOC_FLUSH=$m"); done
        after_crash=("$SD")
    fi
    suite $kind
done

log "total $((SECONDS - t_start)) s"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
