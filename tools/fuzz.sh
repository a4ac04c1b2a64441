#!/bin/bash
# fuzz.sh - build every fuzz target (fuzz/fuzz_targets/) and run each for a bounded time.
#   tools/fuzz.sh [SECONDS_PER_TARGET]      default 20
# Env: FUZZ_TARGETS="a b" runs only these; FUZZ_JOBS sets cargo's build jobs;
# FUZZ_TARGET_DIR is the build directory (default fuzz/target).
#
# Uses `cargo +nightly fuzz run` when cargo-fuzz is installed; otherwise builds the targets the
# way cargo-fuzz does (nightly, sanitizer coverage, AddressSanitizer, --cfg fuzzing) and runs the
# libFuzzer binaries itself, so CI needs no `cargo install`. Each target starts from its
# committed seeds (fuzz/seeds/<target>/) plus the corpus grown by earlier runs
# (fuzz/corpus/<target>/, git-ignored); crashing inputs are written to fuzz/artifacts/<target>/
# (git-ignored). Prints the runs per target and ends with "N passed, M failed" (M = targets that
# found a crash, a leak, a timeout or an out-of-memory); exits non-zero if M > 0.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
[ -n "${FUZZ_JOBS:-}" ] && export CARGO_BUILD_JOBS=$FUZZ_JOBS
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
triple=x86_64-unknown-linux-gnu
# A target directory of its own: these flags rebuild everything.
CARGO_TARGET_DIR=$(realpath -m "${FUZZ_TARGET_DIR:-fuzz/target}")
export CARGO_TARGET_DIR
targets=(${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls *.rs | sed 's/\.rs$//')})

# libFuzzer options: one process, bounded time, inputs, memory and per-input time. The protocol
# targets get inputs long enough to cross their line limits (64 KiB inline RESP commands).
fuzz_opts() { # target
    local o=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024
             -print_final_stats=1)
    case $1 in
        resp_parser) o+=(-max_len=70000) ;;
        memcache_parser) o+=(-max_len=8192) ;;
        pool_open) o+=(-max_len=256) ;;
    esac
    echo "${o[@]}"
}

t0=$SECONDS
use_cargo_fuzz=0
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    use_cargo_fuzz=1
    echo "=== fuzz: building the targets with cargo-fuzz"
    # run from the repository root, where cargo-fuzz finds fuzz/
    cargo +nightly fuzz build -O -a || exit 1
else
    echo "=== fuzz: building the targets (nightly, sanitizer coverage, ASan; no cargo-fuzz)"
    (cd fuzz && RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks" \
        cargo +nightly build --release --target "$triple" --bins) || exit 1
fi
echo "=== fuzz: built in $((SECONDS - t0)) s"

pass=0
fail=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    log=$(mktemp /tmp/pmem-fuzz.XXXXXX.log)
    # shellcheck disable=SC2046
    if ((use_cargo_fuzz)); then
        cargo +nightly fuzz run -O -a "$t" "$corpus" "${seeds[@]}" -- \
            $(fuzz_opts "$t") -artifact_prefix="$artifacts/" >"$log" 2>&1
    else
        "$CARGO_TARGET_DIR/$triple/release/$t" "$corpus" "${seeds[@]}" \
            $(fuzz_opts "$t") -artifact_prefix="$artifacts/" >"$log" 2>&1
    fi
    rc=$?
    # the final statistics, or after a crash the last progress line ("#1234 ...")
    runs=$(awk '/stat::number_of_executed_units:/ { n = $2; s = 1 }
                /^#[0-9]+/ && !s { n = substr($1, 2) }
                END { print n + 0 }' "$log")
    if [ "$rc" = 0 ]; then
        echo "fuzz $t: ok, $runs runs in $secs s (corpus: $(ls "$corpus" | wc -l) inputs)"
        pass=$((pass + 1))
    else
        echo "fuzz $t: FAILED (exit $rc) after $runs runs"
        grep -E '^(==[0-9]+==ERROR|SUMMARY)' "$log" | head -3
        grep -A3 'panicked at' "$log" | head -8
        crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        echo "fuzz $t: crashing input: ${crash:-(none written; see the log below)}"
        [ -n "$crash" ] || tail -30 "$log"
        echo "fuzz $t: reproduce: $CARGO_TARGET_DIR/$triple/release/$t ${crash:-INPUT}"
        fail=$((fail + 1))
    fi
    rm -f "$log"
done
echo "=== fuzz: ${#targets[@]} targets in $((SECONDS - t0)) s"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
