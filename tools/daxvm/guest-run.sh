#!/bin/sh
# guest-run.sh - runs inside the DAX guest (busybox sh), started by guest-tests.sh through
# run-in-vm.sh: runs tests of one Rust test binary, one process per test.
#
# usage: guest-run.sh BINARY SPEC...
#   BINARY  file name of the test binary in /test
#   SPEC    TEST[@NAME=VALUE...]: run `BINARY --ignored --exact TEST --test-threads=1
#           --nocapture` with those variables set, killed after $DAXVM_TEST_TIMEOUT seconds
#           (default 120)
# For each SPEC it prints "GUEST-TEST-START SPEC" and then "GUEST-RESULT SPEC RC SECONDS".
bin=/test/$1
shift
limit=${DAXVM_TEST_TIMEOUT:-120}
for spec in "$@"; do
    old_ifs=$IFS
    IFS=@
    # shellcheck disable=SC2086 # split on @ on purpose
    set -- $spec
    IFS=$old_ifs
    test=$1
    shift
    echo "GUEST-TEST-START $spec"
    t0=$(cut -d' ' -f1 /proc/uptime)
    timeout -s KILL "$limit" env "$@" "$bin" --ignored --exact "$test" --test-threads=1 --nocapture
    rc=$?
    t1=$(cut -d' ' -f1 /proc/uptime)
    [ $rc = 137 ] && echo "GUEST: $test killed after the ${limit} s limit"
    echo "GUEST-RESULT $spec $rc $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")"
done
