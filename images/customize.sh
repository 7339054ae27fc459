#!/usr/bin/env bash
# Runs inside mmdebstrap's customize hook: turns the fresh Debian root in $1
# into the Keel appliance's system (build.sh puts the keel binary in).
set -euo pipefail
root="$1"
here="$(cd "$(dirname "$0")" && pwd)"

cp -a "$here/rootfs/." "$root/"

chroot "$root" useradd --system --user-group --home-dir /var/lib/keel \
  --shell /usr/sbin/nologin --comment "Keel load balancer" keel
echo keel > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tkeel\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  > "$root/etc/hosts"
# The machine id is made at first boot, so every flashed copy differs.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Host keys too: made when SSH is first enabled.
rm -f "$root"/etc/ssh/ssh_host_*
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service \
  systemd-timesyncd.service keel-setup.service keel.service keel-banner.path \
  serial-getty@ttyS0.service
chroot "$root" systemctl disable ssh.service ssh.socket 2>/dev/null || true
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true

# An appliance kernel needs no sound, graphics, wireless or media drivers.
for k in "$root"/lib/modules/*; do
  rm -rf "$k"/kernel/sound "$k"/kernel/drivers/{gpu,media,net/wireless,infiniband,staging,bluetooth,iio,isdn,comedi}
  chroot "$root" depmod "$(basename "$k")"
done
chroot "$root" update-initramfs -u -k all

apt_lists="$root/var/lib/apt/lists"
find "$apt_lists" -type f ! -name lock -delete
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/log/"*.log
