#!/bin/bash
# make-vm.sh - build the DAX guest: a Debian kernel and a busybox initramfs that boot under QEMU
# with an emulated NVDIMM (see README.md beside this script, and run-in-vm.sh to use it).
#
# usage: make-vm.sh [--force]
#   --force   rebuild the initramfs even if it is up to date
#
# Produces, under $DAXVM_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/pmem-daxvm):
#   out/vmlinuz          Debian cloud kernel (LIBNVDIMM, ACPI_NFIT, ND_PMEM, FS_DAX; ext4 built in)
#   out/base.cpio.gz     initramfs: busybox + nvdimm/dax/dm modules + ndctl, daxctl, kmod,
#                        e2fsprogs, xfsprogs, lvm2 (+ their libraries) + glibc/libgcc_s for
#                        dynamically linked Rust binaries + /init
#   out/base.list        the files of base.cpio.gz (run-in-vm.sh adds only what is missing)
#   out/kernel-version
# The kernel package is downloaded with apt-get and unpacked, never installed. Missing host
# packages are installed with apt-get (needs root). Warm runs (nothing to do) take < 1 s.
#
# exit code: 0 on success, 1 on failure.
set -euo pipefail

DAXVM_DIR=${DAXVM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pmem-daxvm}
OUT=$DAXVM_DIR/out
CACHE=$DAXVM_DIR/cache
KFLAVOUR=${DAXVM_KFLAVOUR:-cloud-amd64}   # 'amd64' also works (ext4 is then a module, added too)
APT_TIMEOUT=${DAXVM_APT_TIMEOUT:-900}     # bound every apt-get call (seconds)
force=0
case ${1:-} in
    --force) force=1 ;;
    "") ;;
    *) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 2 ;;
esac

log() { echo "[make-vm] $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$OUT" "$CACHE"
# one builder at a time per DAXVM_DIR
exec {lockfd}>"$DAXVM_DIR/.make-vm.lock"
flock -w 1200 "$lockfd" || die "another make-vm.sh holds $DAXVM_DIR/.make-vm.lock"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pmem-daxvm-make.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# ------------------------------------------------------------------ host packages
apt_updated=0
apt_update() {
    if [ $apt_updated = 0 ]; then
        log "apt-get update"
        timeout "$APT_TIMEOUT" apt-get update -q >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}
need=()
for p in qemu-system-x86 busybox-static cpio gzip kmod ndctl daxctl e2fsprogs xfsprogs lvm2 \
    util-linux coreutils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    log "installing: ${need[*]}"
    [ "$(id -u)" = 0 ] || die "missing packages (${need[*]}) and not root"
    apt_update
    DEBIAN_FRONTEND=noninteractive timeout "$APT_TIMEOUT" \
        apt-get install -y -q --no-install-recommends "${need[@]}" >&2 || die "apt-get install failed"
fi

# ------------------------------------------------------------------ kernel (download + unpack)
kpkg_of() {
    apt-cache depends "linux-image-$KFLAVOUR" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}'
}
kpkg=$(kpkg_of)
if [ -z "$kpkg" ]; then apt_update; kpkg=$(kpkg_of); fi
[ -n "$kpkg" ] || die "no package linux-image-$KFLAVOUR in the apt lists"
kver=${kpkg#linux-image-}
KDIR=$CACHE/kernel-$kver
if [ ! -f "$KDIR/boot/vmlinuz-$kver" ]; then
    log "downloading $kpkg"
    mkdir -p "$tmp/debs" && chmod 755 "$tmp"
    # apt downloads as its sandbox user _apt when that user can write there
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp/debs"; fi
    (cd "$tmp/debs" && timeout "$APT_TIMEOUT" apt-get download -q "$kpkg" >&2) ||
        { apt_update; (cd "$tmp/debs" && timeout "$APT_TIMEOUT" apt-get download -q "$kpkg" >&2); } ||
        die "apt-get download $kpkg failed"
    rm -rf "$KDIR.part" && mkdir -p "$KDIR.part"
    dpkg-deb -x "$tmp"/debs/"$kpkg"_*.deb "$KDIR.part"
    rm -rf "$KDIR" && mv "$KDIR.part" "$KDIR"
    # drop older unpacked kernels
    for d in "$CACHE"/kernel-*; do [ "$d" = "$KDIR" ] || rm -rf "$d"; done
fi
cfg=$KDIR/boot/config-$kver
for opt in LIBNVDIMM ACPI_NFIT BLK_DEV_PMEM FS_DAX DAX ZONE_DEVICE ARCH_HAS_PMEM_API EXT4_FS; do
    grep -qE "^CONFIG_$opt=[ym]" "$cfg" || die "kernel $kver lacks CONFIG_$opt"
done

# ------------------------------------------------------------------ up to date?
# The initramfs depends on this script, the kernel and the host tools copied into it.
stamp=$( { sha256sum < "$0"; echo "$kver"; dpkg-query -W busybox-static ndctl daxctl e2fsprogs \
    xfsprogs lvm2 kmod libc6 libgcc-s1 2>/dev/null; } | sha256sum | cut -d' ' -f1)
if [ $force = 0 ] && [ -f "$OUT/base.cpio.gz" ] && [ -f "$OUT/vmlinuz" ] &&
    [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
    log "up to date: $OUT ($kver)"
    exit 0
fi
log "building the initramfs for $kver"

# ------------------------------------------------------------------ rootfs
R=$tmp/rootfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/lvm,proc,sys,dev,mnt/pmem,tmp,run,root,test}

copy_file() { # host path -> same path in the rootfs (symlinks resolved)
    [ -e "$R$1" ] && return 0
    mkdir -p "$R$(dirname "$1")"
    cp -L "$1" "$R$1"
}
copy_with_libs() { # host executables + the shared libraries ldd reports (and the loader)
    local f lib
    for f in "$@"; do
        copy_file "$f"
        for lib in $(ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}'); do
            copy_file "$lib"
        done
    done
}
copy_with_libs /bin/busybox   # busybox-static has no libraries; a dynamic one gets them
copy_with_libs /usr/bin/kmod /usr/bin/ndctl /usr/bin/daxctl /usr/sbin/mke2fs /usr/sbin/e2fsck \
    /usr/sbin/resize2fs /usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /usr/sbin/lvm /usr/sbin/dmsetup
# the C runtime of dynamically linked Rust binaries (target x86_64-unknown-linux-gnu)
for l in ld-linux-x86-64.so.2 libc.so.6 libgcc_s.so.1 libm.so.6 libpthread.so.0 libdl.so.2 \
    librt.so.1 libutil.so.1; do
    for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/$l" ] && { copy_file "$d/$l"; break; }
    done
done
copy_file /lib64/ld-linux-x86-64.so.2
for t in modprobe insmod rmmod lsmod modinfo depmod; do ln -sf /usr/bin/kmod "$R/usr/sbin/$t"; done
for t in mkfs.ext4 mkfs.ext2; do ln -sf mke2fs "$R/usr/sbin/$t"; done
ln -sf e2fsck "$R/usr/sbin/fsck.ext4"
for t in pvcreate pvs pvremove vgcreate vgs vgremove vgchange lvcreate lvs lvremove lvchange \
    lvextend lvresize vgscan lvscan pvscan; do
    ln -sf lvm "$R/usr/sbin/$t"
done
cat > "$R/etc/lvm/lvm.conf" <<'EOF'
# no udev in the guest
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
EOF
cp /etc/mke2fs.conf "$R/etc/mke2fs.conf"
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"

# kernel modules: nvdimm, nfit, dax, device-mapper (LVM), xfs, loop (+ ext4 if modular)
MSRC=$KDIR/lib/modules/$kver
MDST=$R/lib/modules/$kver
mkdir -p "$MDST"
cp "$MSRC"/modules.{order,builtin,builtin.modinfo} "$MDST"/
want="libnvdimm nfit nd_pmem nd_btt nd_e820 dax_pmem device_dax kmem dm-mod xfs loop"
grep -q '^CONFIG_EXT4_FS=m' "$cfg" && want="$want crc32c_generic ext4"
[ -f "$MSRC/modules.dep" ] || depmod -b "$KDIR" "$kver"
for m in $(for w in $want; do
    modprobe -C /dev/null --ignore-install -d "$KDIR" -S "$kver" --show-depends "$w" |
        awk '$1=="insmod"{print $2}'
done | sort -u); do
    rel=${m#"$MSRC"/}
    mkdir -p "$MDST/$(dirname "$rel")"
    cp "$m" "$MDST/$rel"
done
depmod -b "$R" "$kver"
echo "$want" > "$R/etc/daxvm-modules"

cat > "$R/init" <<'EOF'
#!/bin/busybox sh
# pmem-daxvm guest init. Kernel command line:
#   daxvm.setup=auto  (default) make sure the first region has an fsdax namespace, ext4 on it
#                     (-b 4096, needed for DAX), mounted -o dax on /mnt/pmem
#   daxvm.setup=none  only load the modules; the program does ndctl/mkfs/mount itself
#   daxvm.fresh=1     re-create the namespace and the file system
# Then runs /test/cmd (written by run-in-vm.sh) and prints "DAXVM-EXIT: <rc>".
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp; mount -t tmpfs run /run; mkdir -p /run/lock /run/lvm
echo "DAXVM: init started at uptime $(cut -d' ' -f1 /proc/uptime)s"
setup=auto fresh=0
for a in $(cat /proc/cmdline); do
    case $a in daxvm.setup=*) setup=${a#*=} ;; daxvm.fresh=*) fresh=${a#*=} ;; esac
done
for m in $(cat /etc/daxvm-modules); do modprobe "$m" || echo "DAXVM: modprobe $m failed"; done
i=0   # wait (at most 10 s) for the NVDIMM region
while [ ! -e /sys/bus/nd/devices/region0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
grep -q -w clwb /proc/cpuinfo && echo "DAXVM: guest cpu has clwb" || echo "DAXVM: guest cpu has NO clwb"
export DAXVM_GUEST=1
if [ "$setup" = auto ]; then
    if [ ! -e /sys/bus/nd/devices/region0 ]; then
        echo "DAXVM: no nvdimm region"
    else
        if [ "$fresh" = 1 ] || ! ndctl list -N -m fsdax 2>/dev/null | grep -q '"mode":"fsdax"'; then
            # labelled DIMM: empty label area, then one fsdax namespace over the region;
            # label-less DIMM: convert the raw namespace0.0 in place
            ndctl disable-region all >/dev/null
            ndctl init-labels -f all 2>&1 | grep -q 'initialized [1-9]' && labelled=1 || labelled=0
            ndctl enable-region all >/dev/null
            if [ $labelled = 1 ]; then
                echo "DAXVM: ndctl create-namespace -m fsdax -r region0 (labelled DIMM)"
                ndctl create-namespace -m fsdax -r region0 >/dev/null
            else
                echo "DAXVM: ndctl create-namespace -m fsdax -f -e namespace0.0 (label-less DIMM)"
                ndctl create-namespace -m fsdax -f -e namespace0.0 >/dev/null
            fi || echo "DAXVM: create-namespace failed"
            fresh=1
        fi
        dev=/dev/$(ndctl list -N -m fsdax | sed -n 's/.*"blockdev":"\([^"]*\)".*/\1/p' | head -n1)
        if [ "$dev" = /dev/ ]; then
            echo "DAXVM: no fsdax namespace"
        elif [ "$fresh" = 1 ]; then
            echo "DAXVM: mkfs.ext4 $dev"
            mkfs.ext4 -b 4096 -F -q "$dev" && mount -t ext4 -o dax "$dev" /mnt/pmem
        else # existing file system: mount as it is (ext4 replays its journal after a crash)
            mount -t ext4 -o dax "$dev" /mnt/pmem || echo "DAXVM: mount of $dev failed (try --fresh)"
        fi
        export DAXVM_DEV=$dev DAXVM_MNT=/mnt/pmem
        grep ' /mnt/pmem ' /proc/mounts | sed 's/^/DAXVM: mounted: /'
    fi
fi
echo "DAXVM: running the program at uptime $(cut -d' ' -f1 /proc/uptime)s"
cd /test
sh /test/cmd
rc=$?
echo "DAXVM-EXIT: $rc"
sync
grep -q ' /mnt/pmem ' /proc/mounts && umount /mnt/pmem
poweroff -f
EOF
chmod +x "$R/init"

(cd "$R" && find . | LC_ALL=C sort > "$tmp/list" && cpio -o -H newc --quiet < "$tmp/list" | gzip -1) \
    > "$tmp/base.cpio.gz"
# replace each output with a rename, so that a VM starting meanwhile sees old or new, never half
sed 's/^\.//' "$tmp/list" > "$tmp/base.list"
cp "$KDIR/boot/vmlinuz-$kver" "$tmp/vmlinuz"
echo "$kver" > "$tmp/kernel-version"
for f in vmlinuz base.cpio.gz base.list kernel-version; do mv -f "$tmp/$f" "$OUT/$f"; done
echo "$stamp" > "$OUT/stamp"
log "done: $OUT/vmlinuz ($kver), $OUT/base.cpio.gz ($(du -h "$OUT/base.cpio.gz" | cut -f1))"
