#!/bin/bash
# run-in-vm.sh - boot the DAX guest (emulated NVDIMM backed by a host file) and run one program.
#
# usage: run-in-vm.sh [options] PROGRAM [ARGS...]
#   PROGRAM is a host executable: static, a script for the guest's busybox sh, or dynamically
#   linked against the host glibc (its libraries are copied in; Rust test binaries work).
#   It runs as /test/<name> with cwd /test. By default /mnt/pmem is an ext4 -o dax mount of an
#   fsdax namespace; DAXVM_MNT=/mnt/pmem, DAXVM_DEV=/dev/pmemN and DAXVM_GUEST=1 are exported.
# options:
#   --img FILE        NVDIMM backing file (default $DAXVM_IMG or $DAXVM_DIR/nv.img), created
#                     sparse if missing (a new image implies --fresh)
#   --size SIZE       size when creating the image (default 1G; <= 2G is sensible)
#   --label-size SZ   NVDIMM label area (default 128K; 0 = label-less DIMM)
#   --fresh           re-create the namespace and the file system
#   --setup none      no namespace/mkfs/mount (the program does it: ndctl, LVM, devdax tests)
#   --kill-on REGEX   SIGKILL qemu as soon as a console line matches REGEX ("power failure");
#                     exit code 137
#   --file F          extra host file into /test (repeatable; its libraries are copied too)
#   --env NAME=VALUE  export NAME=VALUE to the program (repeatable)
#   --timeout SEC     wall-clock limit (default 600)
#   --mem SIZE        guest RAM (default 1G)
#   --legacy          use memmap=SIZE!1G legacy e820 PMEM instead of -device nvdimm (no labels;
#                     data in guest RAM only, NOT persisted to --img)
# environment: DAXVM_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/pmem-daxvm), DAXVM_IMG,
#   DAXVM_ACCEL (default tcg: KVM is not reliable on every host).
# exit code: the program's (from the guest's DAXVM-EXIT line), 137 after --kill-on, 124 on
#   timeout, 3 if the guest ended without reporting one, 2 on a usage or setup error.
set -uo pipefail

DAXVM_DIR=${DAXVM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pmem-daxvm}
OUT=$DAXVM_DIR/out
img=${DAXVM_IMG:-$DAXVM_DIR/nv.img} size=1G label=128K fresh=0 setup=auto killre="" timeout=600
mem=1G legacy=0
files=() envs=()
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
        --img) img=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --label-size) label=$2; shift 2 ;;
        --fresh) fresh=1; shift ;;
        --setup) setup=$2; shift 2 ;;
        --kill-on) killre=$2; shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        --env)
            [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "--env wants NAME=VALUE, got '$2'" >&2; exit 2; }
            envs+=("$2"); shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --legacy) legacy=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
prog=$1; shift
case $setup in auto | none) ;; *) echo "--setup must be auto or none" >&2; exit 2 ;; esac
if ! [[ $timeout =~ ^[1-9][0-9]*$ ]]; then echo "--timeout wants seconds" >&2; exit 2; fi
[ -f "$prog" ] || { echo "no such program: $prog" >&2; exit 2; }
for f in vmlinuz base.cpio.gz base.list; do
    [ -f "$OUT/$f" ] || { echo "no guest in $OUT: run make-vm.sh first" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing: run make-vm.sh" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pmem-daxvm-run.XXXXXX")
qpid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    [ -n "$qpid" ] && kill -9 "$qpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- per-run initramfs overlay: /test/<prog>, --file files, libraries the base lacks, /test/cmd
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # single-quote for the guest's sh
add() { # host file $1 -> guest path $2
    mkdir -p "$tmp/root$(dirname "$2")"
    cp -L "$1" "$tmp/root$2"
}
mkdir -p "$tmp/root/test"
add "$prog" "/test/$(basename "$prog")"
chmod +x "$tmp/root/test/$(basename "$prog")"
for f in ${files[@]+"${files[@]}"}; do add "$f" "/test/$(basename "$f")"; done
for f in "$prog" ${files[@]+"${files[@]}"}; do
    for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3}'); do
        grep -qxF "$lib" "$OUT/base.list" || [ -e "$tmp/root$lib" ] || add "$lib" "$lib"
    done
done
{
    echo 'export DAXVM_MNT DAXVM_DEV DAXVM_GUEST'
    for e in ${envs[@]+"${envs[@]}"}; do echo "export ${e%%=*}=$(q "${e#*=}")"; done
    cmd=$(q "/test/$(basename "$prog")")
    for a in "$@"; do cmd+=" $(q "$a")"; done
    echo "$cmd"
} > "$tmp/root/test/cmd"
(cd "$tmp/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$tmp/overlay.cpio.gz"
cat "$OUT/base.cpio.gz" "$tmp/overlay.cpio.gz" > "$tmp/initrd.cpio.gz"

# ---- machine
accel=${DAXVM_ACCEL:-tcg}
append="console=ttyS0 panic=-1 quiet loglevel=3 no_timer_check daxvm.setup=$setup"
qargs=(-machine 'pc,nvdimm=on' -accel "$accel" -cpu max -smp 1 -nographic -no-reboot -nodefaults
    -serial stdio -kernel "$OUT/vmlinuz" -initrd "$tmp/initrd.cpio.gz")
memm=$(( $(numfmt --from=iec "$mem") >> 20 ))
if [ "$legacy" = 1 ]; then
    # legacy e820 PMEM carved out of guest RAM at 1G (+256M, clear of the BIOS tables at the top
    # of RAM): empty at every boot, never persisted on the host
    qargs+=(-m "$(( memm + $(numfmt --from=iec "$size") / 1048576 + 256 ))M"
        -append "$append daxvm.fresh=1 memmap=${size}!1G")
else
    if [ ! -e "$img" ]; then
        mkdir -p "$(dirname "$img")"
        # the label area is carved from the end of the DIMM: add it so the region stays aligned
        lbytes=0; [ "$label" != 0 ] && lbytes=$(numfmt --from=iec "$label")
        truncate -s $(( $(numfmt --from=iec "$size") + lbytes )) "$img" || exit 2
        fresh=1
    fi
    # one VM per image at a time (qemu inherits the lock)
    exec {lockfd}>>"$img.lock"
    flock -n "$lockfd" || { echo "DAXVM-HOST: $img is in use by another VM" >&2; exit 2; }
    isize=$(stat -c %s "$img")
    larg=""; [ "$label" != 0 ] && larg=",label-size=$label"
    qargs+=(-m "${memm}M,slots=2,maxmem=$(( memm + (isize >> 20) + 1024 ))M"
        -object "memory-backend-file,id=mem1,share=on,mem-path=$img,size=$isize"
        -device "nvdimm,memdev=mem1,id=nv1$larg" -append "$append daxvm.fresh=$fresh")
fi

# ---- run, stream the console, optionally "pull the plug"
t0=$(date +%s%N)
elapsed() { local d=$(( ($(date +%s%N) - t0) / 1000000 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
coproc QEMU { exec qemu-system-x86_64 "${qargs[@]}" </dev/null 2>&1; }
qpid=$QEMU_PID
exec {qfd}<&"${QEMU[0]}"   # keep the fd: bash drops QEMU[] once the coprocess ends
rc="" timedout=0 killed=0
deadline=$((SECONDS + timeout))
while :; do
    left=$((deadline - SECONDS))
    [ "$left" -gt 0 ] || { timedout=1; break; }
    IFS= read -r -t "$left" line <&"$qfd"; st=$?
    [ $st -gt 128 ] && { timedout=1; break; }   # read timed out
    [ $st -ne 0 ] && [ -z "$line" ] && break     # EOF: qemu is gone
    line=${line//$'\r'/}
    printf '%s\n' "$line"
    case $line in DAXVM-EXIT:*) rc=${line#DAXVM-EXIT: } ;; esac
    if [ -n "$killre" ] && [[ $line =~ $killre ]]; then
        kill -9 "$qpid"
        echo "DAXVM-HOST: killed qemu (pid $qpid) with SIGKILL $(elapsed) s after start, on /$killre/"
        killed=1
        break
    fi
done
if [ $timedout = 1 ]; then
    kill -9 "$qpid" 2>/dev/null
    echo "DAXVM-HOST: timeout after ${timeout}s, killed qemu"
fi
wait "$qpid" 2>/dev/null; qrc=$?
qpid=""
echo "DAXVM-HOST: qemu ended (rc $qrc) $(elapsed) s after start"
[ $timedout = 1 ] && exit 124
[ $killed = 1 ] && exit 137
[[ $rc =~ ^[0-9]+$ ]] || exit 3
exit "$rc"
