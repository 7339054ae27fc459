#!/usr/bin/env bash
# tests/bench/idle.sh in a virtual machine of this host, where the
# file-descriptor limit can be raised (a container's often cannot: then
# idle.sh cuts N to what the limit allows).
#
#   tests/bench/idle-vm.sh [connections, default 100000]
#
# Boots Debian's kernel in qemu (2 vCPUs, VM_MEMORY, default 12G) with
# everything the measurement runs in its initramfs: the release `keel`
# (KEEL_BIN), `idle_clients`, this host's haproxy and nginx, bash and the
# tools idle.sh uses, each with the libraries it loads. The VM has only a
# loopback interface; its /init raises the limit, runs idle.sh, prints its
# table and powers off. Memory is what it measures, not speed, so software
# emulation serves (the default: VM_ACCEL=kvm VM_CPU=host where nested
# virtualisation works; here KVM's guest hung before its first line).
# VM_CONSOLE=FILE keeps the whole console. Run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}

. tests/bench/lib.sh
bench_need haproxy=haproxy nginx=nginx-light qemu-system-x86_64=qemu-system-x86 \
  cpio=cpio ss=iproute2 pgrep=procps
bench_keel
cargo build -p keel-tests --bin idle_clients -q
target=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
bench_work

# Debian's kernel, as the appliance image uses it.
cache="${KEEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}/image-debs"
kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
deb=$(ls "$cache/${kernel}"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
  (cd "$work" && apt-get download -q "$kernel" >/dev/null)
  deb=$(ls "$work/${kernel}"_*.deb)
fi
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
vmlinuz=$(ls "$work"/boot/vmlinuz-*)

# The initramfs: each program at its own path, with the libraries it loads.
root=$work/root
mkdir -p "$root"/{proc,sys,dev,tmp,etc,run,keel/tests/bench,var/log/nginx,var/lib/nginx,usr/bin,usr/sbin,usr/lib,usr/lib64}
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
put() {
  local p=$1 lib
  mkdir -p "$root$(dirname "$p")"
  cp -L "$p" "$root$p"
  for lib in $(ldd "$p" 2>/dev/null | awk '/=>/ { print $3 } /^\t\/.*ld-linux/ { print $1 }'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
for cmd in bash sh mount ip sysctl sleep cat mkfifo rm seq ls wc mkdir mktemp chmod grep awk \
  pgrep ss dirname head sort tr getconf nproc haproxy nginx; do
  put "$(command -v "$cmd")"
done
cp -L "$KEEL_BIN" "$root/keel/keel"
cp -L "$target/debug/idle_clients" "$root/keel/idle_clients"
strip "$root/keel/keel" "$root/keel/idle_clients"
cp tests/bench/idle.sh tests/bench/lib.sh "$root/keel/tests/bench/"
printf 'root:x:0:0::/root:/bin/bash\nwww-data:x:33:33::/var/www:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n' > "$root/etc/group"
cat > "$root/init" <<INIT
#!/bin/bash
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ip link set lo up
sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"
echo "idle-vm: \$(nproc 2>/dev/null || grep -c ^processor /proc/cpuinfo) vCPUs, \$(awk '/MemTotal/ { print \$2 / 1048576 }' /proc/meminfo) GiB, kernel \$(cat /proc/sys/kernel/osrelease)"
cd /keel && KEEL_BIN=/keel/keel IDLE_CLIENTS=/keel/idle_clients bash tests/bench/idle.sh $N 2>&1
echo "idle-vm: exit \$?"
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 10
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"

timeout 1800 qemu-system-x86_64 -accel "${VM_ACCEL:-tcg,thread=multi}" -cpu "${VM_CPU:-max}" -smp 2 -m "${VM_MEMORY:-12G}" \
  -kernel "$vmlinuz" -initrd "$work/initrd.cpio" -append "console=ttyS0 rdinit=/init panic=-1" \
  -nic none -display none -serial stdio -no-reboot </dev/null | tee "${VM_CONSOLE:-/dev/null}" | tr -d '\r' | grep -v '^\[' || true
