#!/usr/bin/env bash
# Builds the Keel appliance: a bootable disk image (raw and qcow2) made from
# Debian bookworm packages and the release `keel` binary.
#
#   images/build.sh [--keel PATH] [--out DIR] [--no-qcow2]
#
# Output in DIR (default target/image): keel-appliance.raw and
# keel-appliance.qcow2 (compressed). Needs root (the root filesystem is
# assembled with mmdebstrap in a chroot); installs its own tools when they
# are missing. Set KEEL_IMAGE_MIRROR to use another Debian mirror.
#
# Disk layout (MBR, so one image boots on BIOS and on UEFI):
#   1  KEEL-CONFIG  FAT, 32 MiB   keel.yaml, edited by the user after flashing
#   2  KEEL-ESP     FAT, 16 MiB   the UEFI boot loader
#   3  keel-root    ext4          the system (Debian, the kernel, keel)
#   4  KEEL-DATA    ext4          Keel's state; grows to fill the disk at first boot
# BIOS boots GRUB from the MBR and the gap before partition 1.
#
# KEEL_IMAGE_ROOT_CACHE=DIR (the appliance tests set it) keeps the system,
# the root file system before keel goes in, as DIR/rootfs-HASH.tar, named
# by the hash of this recipe, and builds from it for a day: the tests
# build an image for every new binary, and the packages are most of the
# work. Images that ship are built without it, from the packages of the
# day.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

keel=""
out="$repo/target/image"
qcow2=1
while (($#)); do
  case "$1" in
    --keel) keel="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-qcow2) qcow2=0; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ((EUID != 0)); then
  echo "build.sh: run as root (mmdebstrap builds the system in a chroot)" >&2
  exit 1
fi

missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
command -v mcopy >/dev/null || missing+=(mtools)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
command -v strip >/dev/null || missing+=(binutils)
[[ -d /usr/lib/grub/i386-pc ]] || missing+=(grub-pc-bin)
[[ -d /usr/lib/grub/x86_64-efi ]] || missing+=(grub-efi-amd64-bin)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ -z "$keel" ]]; then
  (cd "$repo" && cargo build --release --bin keel)
  keel="$repo/target/release/keel"
fi
[[ -x "$keel" ]] || { echo "build.sh: $keel is not an executable" >&2; exit 1; }

start=$SECONDS
cache="${KEEL_IMAGE_CACHE:-${KEEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}/image-debs}"
mkdir -p "$cache"
work="$(mktemp -d "$out/work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"

mirror="${KEEL_IMAGE_MIRROR:-http://deb.debian.org/debian}"
security="${KEEL_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
packages=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev dbus
  linux-image-amd64 initramfs-tools zstd kmod
  iproute2 e2fsprogs dosfstools cloud-guest-utils fdisk procps
  ca-certificates openssh-server
)

root_cache=""
if [[ -n ${KEEL_IMAGE_ROOT_CACHE:-} ]]; then
  mkdir -p "$KEEL_IMAGE_ROOT_CACHE"
  recipe=$(cd "$here" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  root_cache="$KEEL_IMAGE_ROOT_CACHE/rootfs-$recipe.tar"
  find "$KEEL_IMAGE_ROOT_CACHE" -maxdepth 1 -name 'rootfs-*.tar*' \
    \( ! -name "rootfs-$recipe.tar" -o -mmin +1440 \) -delete
fi
tar_options=(--numeric-owner --xattrs --xattrs-include='*' --acls)
if [[ -n $root_cache && -f $root_cache ]]; then
  echo "== root file system (from $root_cache)"
  mkdir "$root"
  tar "${tar_options[@]}" -xpf "$root_cache" -C "$root"
else
  echo "== root file system (mmdebstrap)"
  # Downloaded packages are kept outside the clone (KEEL_IMAGE_CACHE) so a
  # rebuild, or a fresh clone, does not fetch them again; each build leaves
  # exactly the packages it used there, so old versions do not pile up.
  mmdebstrap --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    --aptopt='Acquire::Retries "3"' \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives "$1"/etc/initramfs-tools/conf.d' \
    --setup-hook="cp -a '$cache/.' \"\$1\"/var/cache/apt/archives/ 2>/dev/null || true" \
    --setup-hook="cp '$here/rootfs/etc/initramfs-tools/conf.d/keel.conf' \"\$1\"/etc/initramfs-tools/conf.d/" \
    --essential-hook='printf "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n" > "$1"/etc/dpkg/dpkg.cfg.d/keel-slim' \
    --customize-hook="if ls \"\$1\"/var/cache/apt/archives/*.deb >/dev/null 2>&1; then rm -f '$cache'/*.deb; cp -a \"\$1\"/var/cache/apt/archives/*.deb '$cache/'; fi" \
    --customize-hook="'$here/customize.sh' \"\$1\"" \
    bookworm "$root" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"
  if [[ -n $root_cache ]]; then
    tar "${tar_options[@]}" -cpf "$root_cache.$$" -C "$root" .
    mv "$root_cache.$$" "$root_cache"
  fi
fi
install -m 0755 "$keel" "$root/usr/bin/keel"
strip --strip-debug "$root/usr/bin/keel"

echo "== file systems"
mib=$((1024 * 1024))
used_mib=$(( $(du -sxm "$root" | cut -f1) ))
# Room for kernel and keel upgrades.
root_mib=$(( (used_mib * 13 / 10 + 512 + 255) / 256 * 256 ))
config_mib=32
esp_mib=16
data_mib=256

mkfs.ext4 -q -F -L keel-root -d "$root" -O ^orphan_file,^metadata_csum_seed \
  "$work/root.img" "${root_mib}M"
mkfs.ext4 -q -F -L KEEL-DATA -O ^orphan_file,^metadata_csum_seed "$work/data.img" "${data_mib}M"

truncate -s "${config_mib}M" "$work/config.img"
mkfs.vfat -n KEEL-CONFIG "$work/config.img" >/dev/null
mcopy -i "$work/config.img" "$here/keel.yaml.example" ::keel.yaml.example
mcopy -i "$work/config.img" "$here/config-README.txt" ::README.txt

truncate -s "${esp_mib}M" "$work/esp.img"
mkfs.vfat -n KEEL-ESP "$work/esp.img" >/dev/null
grub_modules=(part_msdos ext2 search search_label normal linux echo test serial terminal
  configfile)
grub-mkimage -O x86_64-efi -o "$work/BOOTX64.EFI" -p /boot/grub -c "$here/grub-early.cfg" \
  "${grub_modules[@]}" efi_gop all_video
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::EFI/BOOT/BOOTX64.EFI
grub-mkimage -O i386-pc -o "$work/core.img" -p /boot/grub -c "$here/grub-early.cfg" \
  "${grub_modules[@]}" biosdisk
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
if ((core_sectors > 2047)); then
  echo "build.sh: GRUB's core image ($core_sectors sectors) does not fit before partition 1" >&2
  exit 1
fi

echo "== disk image"
disk="$work/keel-appliance.raw"
total_mib=$((1 + config_mib + esp_mib + root_mib + data_mib))
truncate -s "${total_mib}M" "$disk"
sfdisk -q "$disk" <<EOF
label: dos
unit: sectors
start=2048, size=$((config_mib * 2048)), type=c
size=$((esp_mib * 2048)), type=ef
size=$((root_mib * 2048)), type=83, bootable
size=$((data_mib * 2048)), type=83
EOF
place() { dd if="$1" of="$disk" bs=1M seek="$2" conv=notrunc,sparse status=none; }
place "$work/config.img" 1
place "$work/esp.img" $((1 + config_mib))
place "$work/root.img" $((1 + config_mib + esp_mib))
place "$work/data.img" $((1 + config_mib + esp_mib + root_mib))
# BIOS: GRUB's boot sector (code only, the partition table stays) and its
# core image in the sectors after it.
dd if=/usr/lib/grub/i386-pc/boot.img of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

mv "$disk" "$out/keel-appliance.raw"
if ((qcow2)); then
  echo "== qcow2"
  qemu-img convert -c -O qcow2 "$out/keel-appliance.raw" "$out/keel-appliance.qcow2.tmp"
  mv "$out/keel-appliance.qcow2.tmp" "$out/keel-appliance.qcow2"
fi
echo "== done in $((SECONDS - start)) s (root file system ${used_mib} MiB used of ${root_mib} MiB)"
ls -ls "$out"/keel-appliance.*
