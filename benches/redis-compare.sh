#!/usr/bin/env bash
# redis-compare.sh - the pmem-redis example server against Debian's redis-server, with every
# write fsynced to its append-only file (--appendonly yes --appendfsync always) and with no
# persistence at all (--save "" --appendonly no): redis-benchmark ops/s per command, side by side.
# Writes docs/benchmarks/redis.md.
#
#   benches/redis-compare.sh                  about 1-2 minutes on 2 cores (after the build)
#   N=2000 ROUNDS=1 benches/redis-compare.sh  smoke run
#
# Settings (environment): N (requests per test, 10000), CLIENTS (connections, 8), PIPELINE (1),
# ROUNDS (rounds; the report shows the median, 3), TESTS (redis-benchmark -t list), THREADS
# (pmem-redis worker threads, 2), PMEM_REDIS_ARGS (the backend options of pmem-redis; default
# --pool @DIR@/pmem-redis.pool --size 1g, the persistent backend; --memory for the DRAM one), PORT_BASE (first of 3 loopback ports, 23611),
# OUT (the report), AOF_DIR (where the appendfsync-always server keeps its data; default
# /dev/shm like the others; a directory on a disk makes its fsyncs real), RESTART_KEYS (keys for
# the restart-time comparison, 1000000; 0 skips it). PMEM_ALLOC_FORCE_PMEM=1 in the environment
# makes pmem-redis flush with CPU instructions on its tmpfs pool (emulated persistent memory)
# instead of msync.
#
# Needs redis-server, redis-benchmark, redis-cli (Debian redis) and python3. Everything listens
# on 127.0.0.1 only; data files go to /dev/shm and are removed at the end; every process started
# here is stopped by its PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
CLIENTS=${CLIENTS:-8}
PIPELINE=${PIPELINE:-1}
ROUNDS=${ROUNDS:-3}
TESTS=${TESTS:-ping,set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,lrange,mset}
THREADS=${THREADS:-2}
PMEM_REDIS_ARGS=${PMEM_REDIS_ARGS:---pool @DIR@/pmem-redis.pool --size 1g}
PORT_BASE=${PORT_BASE:-23611}
AOF_DIR=${AOF_DIR:-/dev/shm}
RESTART_KEYS=${RESTART_KEYS:-1000000}
OUT=${OUT:-docs/benchmarks/redis.md}

for tool in redis-server redis-benchmark redis-cli python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "redis-compare: $tool is missing (apt-get install redis python3)" >&2
        exit 1
    fi
done

cargo build --release -p pmem-examples --bin pmem-redis
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/pmem-redis"

work=$(mktemp -d)
shm=/dev/shm/redis-compare.$$
aofd=$AOF_DIR/redis-compare-aof.$$
declare -A PIDS=()  # every process started here that may still run: pid -> what

log() { echo "redis-compare: $*" >&2; }

# alive PID: the process exists and is not a zombie.
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && ${st%% *} != Z ]]
}

cleanup() {
    local pid
    for pid in "${!PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${!PIDS[@]}"; do
        for _ in $(seq 1 50); do
            alive "$pid" || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$shm".* "$aofd".*
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in 0 1 2; do
    if ! port_free $((PORT_BASE + i)); then
        log "port $((PORT_BASE + i)) is in use: set PORT_BASE"
        exit 1
    fi
done

variants=("pmem-redis" "redis-server aof-always" "redis-server no-persistence")

# server_cmd VARIANT PORT DIR: the server's command line (into the array CMD).
server_cmd() {
    local -a extra
    read -r -a extra <<<"$PMEM_REDIS_ARGS"
    extra=("${extra[@]//@DIR@/$3}")
    case $1 in
        "pmem-redis") CMD=("$bin" --bind 127.0.0.1 --port "$2" --threads "$THREADS" "${extra[@]}") ;;
        "redis-server aof-always")
            CMD=(redis-server --bind 127.0.0.1 --port "$2" --dir "$3" --save "" --appendonly yes
                --appendfsync always --daemonize no --protected-mode yes) ;;
        "redis-server no-persistence")
            CMD=(redis-server --bind 127.0.0.1 --port "$2" --dir "$3" --save "" --appendonly no
                --daemonize no --protected-mode yes) ;;
        *) log "unknown variant $1"; exit 1 ;;
    esac
}

# The command as printed in the report (no path of this machine).
shown_cmd() {
    local d=/dev/shm/DIR
    [[ $1 == "redis-server aof-always" ]] && d=$AOF_DIR/DIR
    server_cmd "$1" PORT "$d"
    CMD[0]=${CMD[0]/#$bin/target/release/pmem-redis}
    local shown
    shown=$(printf '%q ' "${CMD[@]}")
    echo "${shown% }"
}

results=$work/results.tsv
: >"$results"
problems=$work/problems.md
: >"$problems"
problem() {
    log "PROBLEM: $*"
    printf -- '- **Problem:** %s\n' "$*" >>"$problems"
}

# trial VARIANT ROUND ORDER
trial() {
    local v=$1 round=$2 port=$((PORT_BASE + $3)) dir="$shm.$3" lg="$work/server-$2-$3.log"
    [[ $v == "redis-server aof-always" ]] && dir="$aofd.$3"
    local out="$work/bench-$2-$3.csv" berr="$work/bench-$2-$3.err" rc=0 pid n
    rm -rf "$dir" && mkdir -p "$dir"
    server_cmd "$v" "$port" "$dir"
    "${CMD[@]}" >"$lg" 2>&1 &
    pid=$!
    PIDS[$pid]="$v"
    n=1000
    until redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null | grep -q PONG; do
        if ! alive "$pid" || ((n-- <= 0)); then
            problem "$v did not start on port $port: $(tail -3 "$lg" | tr '\n' ' ')"
            return
        fi
        sleep 0.01
    done
    timeout 600 redis-benchmark -h 127.0.0.1 -p "$port" -n "$N" -c "$CLIENTS" -P "$PIPELINE" \
        -t "$TESTS" --csv >"$out" 2>"$berr" || rc=$?
    if [[ $rc -ne 0 ]]; then
        problem "redis-benchmark against $v (round $round) exited $rc: $(tail -3 "$berr" | tr '\n' ' ')"
    elif [[ -s $berr ]] || grep -qi error "$out"; then
        problem "redis-benchmark against $v (round $round) reported: $(head -3 "$berr" "$out" | tr '\n' ' ')"
    fi
    if ! alive "$pid"; then
        problem "$v died during the benchmark (round $round): $(tail -3 "$lg" | tr '\n' ' ')"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    n=1000
    while alive "$pid" && ((n-- > 0)); do sleep 0.01; done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        problem "$v did not stop within 10 s of SIGTERM (round $round)"
    fi
    local st=0
    wait "$pid" 2>/dev/null || st=$?
    unset "PIDS[$pid]"
    [[ $st == 0 ]] || problem "$v exited with status $st after SIGTERM (round $round)"
    python3 - "$out" "$v" "$round" >>"$results" <<'EOF'
import csv, sys
path, variant, rnd = sys.argv[1:]
with open(path) as f:
    for row in csv.DictReader(f):
        print(f"{variant}\t{rnd}\t{row['test']}\t{row['rps']}\t{row['p50_latency_ms']}")
EOF
    log "round $round/$ROUNDS: $v: $(grep -c . "$out" || true) lines"
    rm -rf "$dir"
}

nv=${#variants[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < nv; k++)); do
        trial "${variants[$(((k + r - 1) % nv))]}" "$r" "$k"
    done
done

# ---- restart time with RESTART_KEYS keys: fill through redis-cli --pipe, stop, start again,
# time until PING answers PONG (Redis answers -LOADING while it replays) and DBSIZE is right.
restarts=$work/restarts.tsv
: >"$restarts"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# wait_ready PORT PID: ms until PING answers PONG (empty on failure)
wait_ready() {
    local t0 n=6000
    t0=$(now_ms)
    until [[ $(redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]]; do
        alive "$2" && ((n-- > 0)) || return 1
        sleep 0.005
    done
    echo $(($(now_ms) - t0))
}
# restart_trial NAME STOP(term|kill|save) COMMAND...: fill, stop, restart, record the time
restart_trial() {
    local name=$1 how=$2 port=$((PORT_BASE)) pid t keys
    shift 2
    "$@" >"$work/restart-$how.log" 2>&1 &
    pid=$!
    PIDS[$pid]="$name"
    if ! wait_ready "$port" "$pid" >/dev/null; then
        problem "restart test: $name did not start"
        return
    fi
    redis-cli -h 127.0.0.1 -p "$port" --pipe <"$work/fill.resp" >/dev/null 2>"$work/pipe.err" ||
        problem "restart test: filling $name failed: $(head -2 "$work/pipe.err" | tr '\n' ' ')"
    keys=$(redis-cli -h 127.0.0.1 -p "$port" DBSIZE)
    case $how in
        kill) kill -KILL "$pid" ;;
        save) redis-cli -h 127.0.0.1 -p "$port" SHUTDOWN SAVE >/dev/null 2>&1 || true ;;
        *) kill -TERM "$pid" ;;
    esac
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$pid]"
    t=$(now_ms)
    "$@" >>"$work/restart-$how.log" 2>&1 &
    pid=$!
    PIDS[$pid]="$name"
    local waited
    if ! waited=$(wait_ready "$port" "$pid"); then
        problem "restart test: $name did not come back"
        return
    fi
    t=$(($(now_ms) - t))
    local back
    back=$(redis-cli -h 127.0.0.1 -p "$port" DBSIZE)
    [[ $back == "$keys" ]] || problem "restart test: $name had $keys keys before and $back after"
    printf '%s\t%s\t%s\n' "$name" "$keys" "$t" >>"$restarts"
    log "restart: $name: $keys keys back in $t ms"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$pid]"
}
if ((RESTART_KEYS > 0)); then
    python3 - "$RESTART_KEYS" >"$work/fill.resp" <<'EOF'
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
for i in range(n):
    k = b"key:%09d" % i
    v = b"value-%09d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
EOF
    d="$shm.r"
    rm -rf "$d" && mkdir -p "$d"
    server_cmd "pmem-redis" "$PORT_BASE" "$d"
    restart_trial "pmem-redis, clean restart (SIGTERM)" term "${CMD[@]}"
    rm -rf "$d" && mkdir -p "$d"
    restart_trial "pmem-redis, after kill -9" kill "${CMD[@]}"
    rm -rf "$d" && mkdir -p "$d"
    server_cmd "redis-server aof-always" "$PORT_BASE" "$d"
    restart_trial "redis-server, AOF replay (appendfsync always)" term "${CMD[@]}"
    rm -rf "$d" && mkdir -p "$d"
    server_cmd "redis-server no-persistence" "$PORT_BASE" "$d"
    restart_trial "redis-server, RDB load (SHUTDOWN SAVE)" save "${CMD[@]}"
    rm -rf "$d"
fi

rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- examples 2>/dev/null || rev+="+modified"
meta=$work/meta.tsv
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M')"
    printf 'cpu\t%s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'versions\t%s\n' "pmem-redis $rev, $(redis-server --version | cut -d' ' -f1-3)"
    printf 'bench\t%s\n' "redis-benchmark -h 127.0.0.1 -p PORT -n $N -c $CLIENTS -P $PIPELINE -t $TESTS --csv"
    printf 'rounds\t%s\n' "$ROUNDS"
    printf 'pmem_args\t%s\n' "$PMEM_REDIS_ARGS"
    printf 'aof_dir\t%s\n' "$AOF_DIR"
    printf 'force_pmem\t%s\n' "${PMEM_ALLOC_FORCE_PMEM:-0}"
    printf 'restarts\t%s\n' "$restarts"
    for v in "${variants[@]}"; do printf 'cmd:%s\t%s\n' "$v" "$(shown_cmd "$v")"; done
    printf 'variants\t%s\n' "$(IFS='|'; echo "${variants[*]}")"
} >"$meta"

mkdir -p "$(dirname "$OUT")"
python3 - "$results" "$meta" "$problems" >"$OUT.tmp" <<'EOF'
import statistics, sys
results, meta_path, problems = sys.argv[1:]
meta = dict(l.rstrip("\n").split("\t", 1) for l in open(meta_path) if "\t" in l)
variants = meta["variants"].split("|")
rps, order = {}, []
for line in open(results):
    v, rnd, test, r, p50 = line.rstrip("\n").split("\t")
    if test not in order:
        order.append(test)
    rps.setdefault((test, v), []).append(float(r))
med = {k: statistics.median(x) for k, x in rps.items()}
memory = "--memory" in meta["pmem_args"].split()
print("# pmem-redis against redis-server: redis-benchmark throughput\n")
print("Generated by `benches/redis-compare.sh`; do not edit by hand.\n")
if memory:
    print("> **Placeholder:** these pmem-redis figures are for the DRAM reference backend "
          "(`--memory`, nothing persisted). They will be replaced by the persistent backend's "
          "figures once it exists; until then the comparison with the persistent Redis "
          "configuration is not like for like.\n")
print(f"- Date: {meta['date']} UTC; CPU: {meta['cpu']} ({meta['nproc']} CPUs, shared with "
      f"other work); kernel {meta['kernel']}")
print(f"- Versions: {meta['versions']}")
print(f"- Client: `{meta['bench']}`, {meta['rounds']} round(s), variants in rotating order; "
      "the table shows the median ops/s per test")
aof_disk = meta["aof_dir"] != "/dev/shm"
force = meta["force_pmem"] == "1"
print("- Everything on 127.0.0.1. Data directories on /dev/shm (tmpfs)"
      + (f", except the appendfsync-always server's, on a disk file system ({meta['aof_dir']}): "
         "its fsyncs are real" if aof_disk else
         ": `fsync` costs almost nothing there, so the appendfsync-always server pays little for "
         "its durability; on a disk it pays far more"))
if force:
    print("- pmem-redis ran with `PMEM_ALLOC_FORCE_PMEM=1`: its tmpfs pool is treated as "
          "persistent memory (cache-line flushes and fences per commit, no msync), which is "
          "what it costs on a DAX file system; nothing here is actually durable")
else:
    print("- pmem-redis' pool is a page-cache file: each commit's flushes are `msync` calls "
          "(cheap on tmpfs)")
print("- No CPU pinning: servers and redis-benchmark share the machine's CPUs; pmem-redis runs "
      "its worker threads (`--threads`) while redis-server executes commands on one thread")
print("- On a shared machine single runs of one configuration can differ by tens of percent; "
      "the medians damp that, but read ratios near 1 as equal")
for v in variants:
    print(f"- {v}: `{meta['cmd:' + v]}`")
print()
a, b, c = variants
print(f"| test | {a} | {b} | {c} | {a} / {b} | {a} / {c} |")
print("|---|---:|---:|---:|---:|---:|")
def f(x):
    return "-" if x is None else f"{x:,.0f}"
def ratio(x, y):
    return "-" if not x or not y else f"{x / y:.2f}"
ra, rc = [], []
for t in order:
    xa, xb, xc = (med.get((t, v)) for v in variants)
    print(f"| {t} | {f(xa)} | {f(xb)} | {f(xc)} | {ratio(xa, xb)} | {ratio(xa, xc)} |")
    if xa and xb and xc:
        ra.append(xa / xb)
        rc.append(xa / xc)
print()
if ra:
    ga, gc = statistics.geometric_mean(ra), statistics.geometric_mean(rc)
    print(f"Geometric mean over the tests: **{ga:.2f}x** {b} (goal >= 2: "
          f"{'met' if ga >= 2 else 'MISSED'}; worst test {min(ra):.2f}x), "
          f"**{gc:.2f}x** {c} (goal >= 0.7: {'met' if gc >= 0.7 else 'MISSED'}; worst test "
          f"{min(rc):.2f}x).\n")
    # The tests whose every request changes the keyspace, so that the appendfsync-always
    # server appends (and fsyncs) each one. redis-benchmark without -r uses one literal member
    # ("element:__rand_int__"): SADD and ZADD change nothing after the first request, and SPOP
    # and ZPOPMIN find the set empty after it, so Redis logs nothing for them; PING, GET and
    # LRANGE only read.
    writes = {"SET", "INCR", "LPUSH", "RPUSH", "LPOP", "RPOP", "HSET",
              "LPUSH (needed to benchmark LRANGE)", "MSET (10 keys)"}
    wa = [med[(t, a)] / med[(t, b)] for t in order
          if t in writes and med.get((t, a)) and med.get((t, b))]
    if wa:
        gw = statistics.geometric_mean(wa)
        print(f"Over the {len(wa)} tests that write on every request ({', '.join(t for t in order if t in writes)}; "
              f"the only ones where the appendfsync-always server pays for durability): "
              f"**{gw:.2f}x** {b} (goal >= 2: {'met' if gw >= 2 else 'MISSED'}; worst test "
              f"{min(wa):.2f}x). The other tests write nothing (SADD and ZADD add the same "
              "member every time, SPOP and ZPOPMIN find the set empty after the first request) "
              "or only read, so both servers do the same work there.\n")
rs = [l.rstrip("\n").split("\t") for l in open(meta["restarts"]) if l.strip()]
if rs:
    print("## Restart time\n")
    print("Filled with `redis-cli --pipe` (SET of distinct keys, 16-byte values), stopped as "
          "shown, started again; the time runs from the start of the process until `PING` "
          "answers `PONG` (Redis answers `-LOADING` while it replays), and `DBSIZE` must then "
          "give the same count.\n")
    print("| server, how it stopped | keys | restart ms |")
    print("|---|---:|---:|")
    for name, keys, ms in rs:
        print(f"| {name} | {int(keys):,} | {int(ms):,} |")
    print()
probs = open(problems).read().strip()
if probs:
    print("## Problems\n")
    print(probs)
else:
    print("No problems: every redis-benchmark run exited 0 with no error output, and every "
          "server stopped cleanly on SIGTERM.")
EOF
mv "$OUT.tmp" "$OUT"
log "wrote $OUT ($(grep -c . "$problems" || true) problem(s))"
