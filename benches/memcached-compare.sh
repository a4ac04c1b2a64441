#!/usr/bin/env bash
# memcached-compare.sh - the pmem-memcached example server against Debian's memcached (plain and
# with its restartable cache, -e on /dev/shm): memcaslap throughput at 9:1 and 1:1 get/set, and
# restart time to the first answered connection with 1M items. Writes docs/benchmarks/memcached.md.
#
#   benches/memcached-compare.sh            full run (about 10 minutes on 2 cores)
#   QUICK=1 benches/memcached-compare.sh    smoke run (about 1 minute; report goes to
#                                           ${TMPDIR:-/tmp}/memcached-compare-quick.md unless OUT=)
#
# Settings (environment): ROUNDS (throughput rounds, 5), RUN_S (seconds per memcaslap run, 10),
# ITEMS (items for the restart test, 1000000), RST_TRIALS (restarts per variant, 3),
# SERVER_CPUS (taskset list for the servers, 0-1), CLIENT_CPUS (memcaslap and the poller, 0-1),
# PORT_BASE (first of 8 loopback ports, 23411), OUT (the report), RAW (a directory to keep the raw
# trials in).
#
# Needs memcached, libmemcached-tools (memcaslap) and python3 (tools/install-deps.sh --bench).
# Everything listens on 127.0.0.1 only; item files and pools go to /dev/shm and are removed at the
# end; every process started here is stopped by its PID when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1} RUN_S=${RUN_S:-3} ITEMS=${ITEMS:-100000} RST_TRIALS=${RST_TRIALS:-1}
    OUT=${OUT:-${TMPDIR:-/tmp}/memcached-compare-quick.md}
else
    ROUNDS=${ROUNDS:-5} RUN_S=${RUN_S:-10} ITEMS=${ITEMS:-1000000} RST_TRIALS=${RST_TRIALS:-3}
    OUT=${OUT:-docs/benchmarks/memcached.md}
fi
# Both sides on both CPUs by default: on this shared 2-CPU machine that gave steadier ratios than
# server on CPU 0 and memcaslap on CPU 1 (see benches/memcached/notes.md).
SERVER_CPUS=${SERVER_CPUS:-0-1}
CLIENT_CPUS=${CLIENT_CPUS:-0-1}
PORT_BASE=${PORT_BASE:-23411}
THREADS=2 MEM=1024 CONNS=1024 VBYTES=100 CONC=32

for tool in memcached memcaslap python3 taskset; do
    if ! command -v "$tool" >/dev/null; then
        echo "memcached-compare: $tool is missing (memcached, libmemcached-tools, python3)" >&2
        exit 1
    fi
done

cargo build --release -p pmem-examples --bin pmem-memcached
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/pmem-memcached"
tool=benches/memcached/mctool.py

work=$(mktemp -d)
shm=/dev/shm/memcached-compare.$$
declare -A PIDS=()  # every process started here that may still run: pid -> what

cleanup() {
    local pid
    for pid in "${!PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${!PIDS[@]}"; do
        for _ in $(seq 1 50); do
            alive "$pid" || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    rm -f "$shm".*
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "memcached-compare: $*" >&2; }

# alive PID: the process exists and is not a zombie.
alive() {
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && ${st%% *} != Z ]]
}

# cpu_ticks PID: user+system CPU ticks of the process (all its threads).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# busy_ticks: non-idle ticks of the whole machine.
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

U=()
[[ $EUID -eq 0 ]] && U=(-u nobody)  # memcached refuses to run as root without -u

# server_cmd VARIANT PORT FILE: the server's command line (into the array CMD).
server_cmd() {
    local common=(-l 127.0.0.1 -p "$2" -t "$THREADS" -m "$MEM" -c "$CONNS")
    case $1 in
        "memcached") CMD=(memcached "${U[@]}" "${common[@]}") ;;
        "memcached -e") CMD=(memcached "${U[@]}" "${common[@]}" -e "$3") ;;
        "pmem-memcached" | "pmem-memcached kill -9") CMD=("$bin" "${U[@]}" "${common[@]}" -e "$3") ;;
        "pmem-memcached --durable") CMD=("$bin" "${U[@]}" "${common[@]}" -e "$3" --durable) ;;
        *) log "unknown variant $1"; exit 1 ;;
    esac
}

# The command as printed in the report (no path of this machine).
shown_cmd() {
    local port=PORT file=/dev/shm/FILE
    server_cmd "$1" "$port" "$file"
    CMD[0]=${CMD[0]/#$bin/target/release/pmem-memcached}
    echo "taskset -c $SERVER_CPUS ${CMD[*]}"
}

# start_server VARIANT PORT FILE LOG: starts it in the background; its pid in SRV_PID.
start_server() {
    server_cmd "$1" "$2" "$3"
    taskset -c "$SERVER_CPUS" "${CMD[@]}" >>"$4" 2>&1 &
    SRV_PID=$!
    PIDS[$SRV_PID]="$1"
}

# stop_server PID SIGNAL TIMEOUT_S: signals it, waits (bounded) for its exit; exit status in
# STOP_RC ("hung" if it did not exit in time and had to be killed).
stop_server() {
    local pid=$1 sig=$2 n
    kill "-$sig" "$pid" 2>/dev/null || true
    n=$(($3 * 100))
    while alive "$pid" && ((n-- > 0)); do sleep 0.01; done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        STOP_RC=hung
    else
        STOP_RC=0
        wait "$pid" 2>/dev/null || STOP_RC=$?
    fi
    unset "PIDS[$pid]"
}

# wait_ready PORT PID TIMEOUT_S: waits until the server answers `version`.
wait_ready() {
    local n=$(($3 * 100))
    while ((n-- > 0)); do
        if python3 "$tool" stat "$1" pid >/dev/null 2>&1; then return 0; fi
        alive "$2" || return 1
        sleep 0.01
    done
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for i in $(seq 0 7); do
    if ! port_free $((PORT_BASE + i)); then
        log "port $((PORT_BASE + i)) is in use: set PORT_BASE"
        exit 1
    fi
done

results=$work/results.tsv
meta=$work/meta.tsv
notes=$work/notes.md
printf 'kind\tworkload\tvariant\tround\torder\tops\ttotal_ops\tget_misses\twall_s\tcli_cpu_s\tsrv_cpu_s\tother_cpu\tstatus\tms\tready_ms\titems\tstart_kind\tget_ms\n' >"$results"
: >"$notes"
problems=0
problem() {
    problems=$((problems + 1))
    log "PROBLEM: $*"
    printf -- '- **Problem:** %s\n' "$*" >>"$notes"
}

variants=("memcached" "memcached -e" "pmem-memcached" "pmem-memcached --durable")
workloads=("9:1" "1:1")
declare -A CFG=([9:1]=benches/memcached/get-set-9-1.cnf [1:1]=benches/memcached/get-set-1-1.cnf)
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD -- examples pmem-alloc 2>/dev/null || rev+="+modified"

{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M')"
    printf 'cpu\t%s\n' "$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'os\t%s\n' "$(. /etc/os-release && echo "$PRETTY_NAME")"
    printf 'loadavg\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'versions\t%s\n' "pmem-memcached $rev ($("$bin" --version | sed 's/^pmem-memcached //')), memcached $(ver memcached), memcaslap from libmemcached-tools $(ver libmemcached-tools)"
    printf 'command\t%s\n' "$([[ $QUICK == 1 ]] && echo "QUICK=1 ")benches/memcached-compare.sh"
    [[ $QUICK == 1 ]] && printf 'quick\t%s\n' "QUICK=1 smoke run: too short for conclusions"
    printf 'threads\t%s\nmem\t%s\nrst_mem\t%s\n' "$THREADS" "$MEM" "$MEM"
    printf 'server_cpus\t%s\nclient_cpus\t%s\nrounds\t%s\n' "$SERVER_CPUS" "$CLIENT_CPUS" "$ROUNDS"
    printf 'items\t%s\nvbytes\t%s\nrst_trials\t%s\n' "$ITEMS" "$VBYTES" "$RST_TRIALS"
    printf 'memcaslap_cmd\t%s\n' "taskset -c $CLIENT_CPUS memcaslap -s 127.0.0.1:PORT -T 1 -c $CONC -t ${RUN_S}s -F benches/memcached/get-set-9-1.cnf   # or get-set-1-1.cnf"
    printf 'variants\t%s\n' "$(IFS=,; echo "${variants[*]}")"
    printf 'workloads\t%s\n' "$(IFS=,; echo "${workloads[*]}")"
    for v in "${variants[@]}" "pmem-memcached kill -9"; do
        printf 'cmd:%s\t%s\n' "$v" "$(shown_cmd "$v")"
    done
} >"$meta"

# ------------------------------------------------------------------ throughput
# tput_trial WORKLOAD VARIANT ROUND ORDER
tput_trial() {
    local wl=$1 v=$2 round=$3 order=$4 port=$((PORT_BASE + $4)) file="$shm.tput"
    local lg="$work/tput-$round-$order-${wl/:/}.log" out="$work/memcaslap-$round-$order-${wl/:/}.out"
    local status=ok ops="" total="" misses="" wall="" ucpu="" scpu="" srv="" other="" rc=0
    rm -f "$file" "$file.meta"
    start_server "$v" "$port" "$file" "$lg"
    local pid=$SRV_PID
    if ! wait_ready "$port" "$pid" 60; then
        status="did not start"
        problem "$v did not answer on port $port ($(tail -3 "$lg" | tr '\n' ' '))"
    else
        local c0 b0 c1 b1 tf="$work/time.$$"
        c0=$(cpu_ticks "$pid") b0=$(busy_ticks)
        TIMEFORMAT='%R %U %S'
        { time timeout $((RUN_S + 60)) taskset -c "$CLIENT_CPUS" memcaslap -s "127.0.0.1:$port" \
            -T 1 -c "$CONC" -t "${RUN_S}s" -F "${CFG[$wl]}" >"$out" 2>&1; } 2>"$tf" || rc=$?
        b1=$(busy_ticks)
        c1=$(cpu_ticks "$pid" 2>/dev/null || echo "")
        read -r wall ucpu scpu <"$tf"
        if [[ -n $c1 ]]; then srv=$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", (b-a)/100}'); fi
        ops=$(sed -n 's/^Run time: .* TPS: \([0-9]*\).*/\1/p' "$out" | tail -1)
        total=$(sed -n 's/^Run time: .* Ops: \([0-9]*\) .*/\1/p' "$out" | tail -1)
        misses=$(sed -n 's/^get_misses: *\([0-9]*\)/\1/p' "$out" | tail -1)
        other=$(awk -v a="$b0" -v b="$b1" -v s="${srv:-0}" -v u="$ucpu" -v y="$scpu" -v w="$wall" \
            'BEGIN{x=((b-a)/100 - s - u - y)/w; if (x<0) x=0; printf "%.2f", x}')
        if ! alive "$pid"; then
            status="server died"
            problem "$v died during memcaslap $wl (round $round): $(tail -5 "$lg" | tr '\n' ' ')"
        elif [[ $rc -ne 0 || -z $ops ]]; then
            status="memcaslap rc $rc"
            problem "memcaslap against $v ($wl, round $round) exited $rc: $(tail -5 "$out" | tr '\n' ' ')"
        fi
    fi
    stop_server "$pid" TERM 60
    if [[ $STOP_RC != 0 && $status == ok ]]; then
        status="exit $STOP_RC"
        problem "$v exited with status $STOP_RC after SIGTERM ($wl, round $round): $(tail -5 "$lg" | tr '\n' ' ')"
    fi
    rm -f "$file" "$file.meta"
    log "throughput $wl round $round/$ROUNDS: $v: ${ops:-?} ops/s ($status; server CPU ${srv:-?} s, client ${ucpu:-?}+${scpu:-?} s, others ${other:-?} cores)"
    printf 'tput\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t\t\n' "$wl" "$v" "$round" \
        "$order" "$ops" "$total" "$misses" "$wall" \
        "$(awk -v u="${ucpu:-0}" -v s="${scpu:-0}" 'BEGIN{print u+s}')" "$srv" "$other" "$status" >>"$results"
}

nv=${#variants[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for wl in "${workloads[@]}"; do
        for ((k = 0; k < nv; k++)); do
            tput_trial "$wl" "${variants[$(((k + r - 1) % nv))]}" "$r" "$k"
        done
    done
done

# ------------------------------------------------------------------ restart time
rvariants=("memcached -e" "pmem-memcached" "pmem-memcached kill -9")
declare -A RPORT=() RFILE=() RPID=() RSIG=(["memcached -e"]=USR1 ["pmem-memcached"]=TERM ["pmem-memcached kill -9"]=KILL)
{
    printf 'rst_variants\t%s\n' "$(IFS=,; echo "${rvariants[*]}")"
    printf 'stop:memcached -e\tSIGUSR1\nstop:pmem-memcached\tSIGTERM\nstop:pmem-memcached kill -9\tSIGKILL\n'
} >>"$meta"
i=4
for v in "${rvariants[@]}"; do
    RPORT[$v]=$((PORT_BASE + i)) RFILE[$v]="$shm.rst$i"
    i=$((i + 1))
    rm -f "${RFILE[$v]}" "${RFILE[$v]}.meta"
    start_server "$v" "${RPORT[$v]}" "${RFILE[$v]}" "$work/rst-$i-load.log"
    RPID[$v]=$SRV_PID
    if ! wait_ready "${RPORT[$v]}" "$SRV_PID" 60; then
        problem "$v did not start for the restart test: $(tail -3 "$work/rst-$i-load.log" | tr '\n' ' ')"
        exit 1
    fi
    secs=$(taskset -c "$CLIENT_CPUS" python3 "$tool" load "${RPORT[$v]}" "$ITEMS" "$VBYTES")
    n=$(python3 "$tool" stat "${RPORT[$v]}" curr_items)
    log "restart test: loaded $v with $n items in $secs s"
    printf 'load:%s\t%s (%s s)\n' "$v" "$n" "$secs" >>"$meta"
    [[ $n == "$ITEMS" ]] || problem "$v holds $n items after loading $ITEMS (curr_items)"
done

nr=${#rvariants[@]}
for ((t = 1; t <= RST_TRIALS; t++)); do
    for ((k = 0; k < nr; k++)); do
        v=${rvariants[$(((k + t - 1) % nr))]}
        port=${RPORT[$v]} status=ok ms="" ready="" items="" kind="" getms=""
        stop_server "${RPID[$v]}" "${RSIG[$v]}" 120
        if [[ ${RSIG[$v]} != KILL && $STOP_RC != 0 ]]; then
            problem "$v exited with status $STOP_RC after SIG${RSIG[$v]} (restart trial $t)"
        fi
        # memcached refuses to restore within the wall-clock second of its stop_time (it
        # requires now - stop_time > 0): every variant restarts in the next second.
        s0=$EPOCHSECONDS
        while ((EPOCHSECONDS == s0)); do sleep 0.02; done
        lg="$work/rst-$t-$k.log"
        : >"$lg"
        rm -f "$work/ready" "$work/poll.out"
        taskset -c "$CLIENT_CPUS" python3 "$tool" wait "$port" "$work/ready" 120 "key:$((ITEMS - 1))" >"$work/poll.out" &
        poller=$!
        PIDS[$poller]=poller
        n=500
        while [[ ! -e $work/ready ]] && ((n-- > 0)); do sleep 0.01; done
        sleep 0.05
        t0=$EPOCHREALTIME
        start_server "$v" "$port" "${RFILE[$v]}" "$lg"
        RPID[$v]=$SRV_PID
        prc=0
        wait "$poller" || prc=$?
        unset "PIDS[$poller]"
        if [[ $prc -ne 0 ]]; then
            status="no reply"
            problem "$v did not answer after restart trial $t: $(tail -3 "$lg" | tr '\n' ' ')"
        else
            read -r t1 tg _ <"$work/poll.out"
            ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)*1000}')
            if [[ $tg == [0-9]* ]]; then
                getms=$(awk -v a="$t0" -v b="$tg" 'BEGIN{printf "%.1f", (b-a)*1000}')
            else
                getms=""
                problem "$v: get key:$((ITEMS - 1)) right after restart trial $t gave: $tg"
            fi
            items=$(python3 "$tool" stat "$port" curr_items)
            ready=$(sed -n 's/.*ready in \([0-9]*\) ms.*/\1/p' "$lg" | tail -1)
            kind=$(sed -n 's/.*items restored (\([a-z]*\).*/\1/p' "$lg" | tail -1)
            if [[ $v == "memcached -e" ]]; then
                kind=$({ grep -o '^\[restart\].*' "$lg" || true; } | tail -1 | sed 's/|/\\|/g')
                if [[ -z $kind ]]; then
                    kind="items restored"
                    [[ $items == 0 ]] && kind="empty"
                fi
            fi
            [[ $items == "$ITEMS" ]] || problem "$v holds $items items after restart trial $t (loaded $ITEMS)"
        fi
        log "restart trial $t/$RST_TRIALS: $v: ${ms:-?} ms to the first reply (log: ready in ${ready:-?} ms, ${kind:-?}), $items items"
        printf 'restart\t\t%s\t%s\t%s\t\t\t\t\t\t\t\t%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$t" "$k" "$status" \
            "$ms" "$ready" "$items" "$kind" "$getms" >>"$results"
    done
done
for v in "${rvariants[@]}"; do
    stop_server "${RPID[$v]}" TERM 120
    [[ $STOP_RC == 0 ]] || problem "$v exited with status $STOP_RC after the final SIGTERM"
done

# ------------------------------------------------------------------ report
printf 'loadavg_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$meta"
{
    echo "- Pinning: servers on CPU(s) $SERVER_CPUS (\`taskset -c $SERVER_CPUS\`, all of their threads), memcaslap and the restart poller on CPU(s) $CLIENT_CPUS; the same for every variant."
    echo "- memcaslap is a single client thread; its CPU load (column *client CPU load*, 1.00 = one core busy all the time) shows whether the client rather than the server sets the pace."
    awk -F'\t' 'NR>1 && $1=="tput" && $12!="" {n++; s+=$12; if ($12>m) m=$12; if (mn=="" || $12<mn) mn=$12; sv+=$11/$9; cl+=$10/$9} END {if (n) printf "- Other processes on the machine (from /proc/stat minus the server and memcaslap) used on average %.2f cores during the throughput trials (%.2f to %.2f per trial); the machine is shared, so absolute numbers move with that load, and the ratios compare variants measured a few seconds apart in the same round. Meanwhile the server used on average %.2f cores and memcaslap %.2f: when neither is saturated, ops/s is set by how fast each side gets the CPU back after a wake-up, which the other load dominates; server CPU time per operation is then the steadier comparison.\n", s/n, mn, m, sv/n, cl/n}' "$results"
    awk -F'\t' -v vs="$(IFS='|'; echo "${variants[*]}")" 'NR>1 && $1=="tput" && $12!="" {n[$3]++; s[$3]+=$12; c[$3]+=$11/$9} END {printf "- Average load of other processes during the throughput trials of each variant / the server'"'"'s own CPU use, in cores:"; sep=" "; k=split(vs, a, "|"); for (i=1; i<=k; i++) {v=a[i]; if (n[v]) {printf "%s%s %.2f / %.2f", sep, v, s[v]/n[v], c[v]/n[v]; sep="; "}}; print "."}' "$results"
    echo "- No persistent memory here: the pools and memcached's \`-e\` file are on a tmpfs; \`--durable\` pays its flushes and fences on DRAM."
    if [[ -f benches/memcached/notes.md ]]; then
        echo
        cat benches/memcached/notes.md
    fi
} >>"$notes"
printf 'notes_file\t%s\n' "$notes" >>"$meta"
mkdir -p "$(dirname "$OUT")"
if [[ -n ${RAW:-} ]]; then  # keep the raw trials (RAW=DIR) to rerun the report step
    mkdir -p "$RAW" && cp "$results" "$meta" "$notes" "$RAW/"
fi
python3 "$tool" report "$results" "$meta" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT ($problems problem(s))"
