#!/bin/sh
# tools/boot/image.sh CACHE: builds (once) the Debian 12 guest the boot test
# boots, and prints the path of its root tarball. See docs/boot-test.md.
#
# The guest holds only what the guide says a machine needs at run time
# (fuse3, libfuse3-3, libcurl4, libssl3), plus systemd, a kernel, python3
# and the KMS emulator (moto, from wheels downloaded here on the host and
# installed offline: pip inside the chroot fails certificate checks). No
# kmsfs: each run installs the fresh .deb into a copy (boot-test.py).
#
# The tarball is cached as CACHE/guest-HASH.tar, HASH covering this script
# and the wheel list, so a run after a change here builds anew and other
# runs reuse it (CI keeps /var/cache/kmsfs-boot between runs).
set -eu

cache=${1:?usage: tools/boot/image.sh CACHE}
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}

# What the guest runs. The emulator's packages are pinned so the cache key
# names them; moto's server needs flask and flask-cors beside moto itself.
PACKAGES="systemd systemd-sysv udev dbus kmod procps linux-image-cloud-amd64 fuse3 libfuse3-3 libcurl4 libssl3 python3"
WHEELS="moto==5.2.1 flask==3.1.3 flask-cors==6.0.5"

key=$( (cat "$0"; echo "$PACKAGES $WHEELS") | sha256sum | cut -c1-16)
tar="$cache/guest-$key.tar"
if [ -s "$tar" ]; then echo "$tar"; exit 0; fi

mkdir -p "$cache"
for cmd in mmdebstrap; do
    command -v $cmd >/dev/null || { echo "image.sh: $cmd is missing (apt-get install mmdebstrap)" >&2; exit 1; }
done

wheels="$cache/wheels-$key"
if [ ! -f "$wheels/.complete" ]; then
    rm -rf "$wheels"; mkdir -p "$wheels"
    echo "image.sh: downloading the KMS emulator's wheels" >&2
    $PY -m pip download -q --disable-pip-version-check -d "$wheels" --only-binary=:all: \
        --python-version 3.11 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 $WHEELS >&2
    touch "$wheels/.complete"
fi

echo "image.sh: building the Debian 12 guest (a few minutes, once)" >&2
tmp="$cache/.guest-$key.$$.tar"
trap 'rm -f "$tmp"' EXIT INT TERM
# shellcheck disable=SC2086
mmdebstrap --variant=minbase --mode=root --quiet \
    --include="$(echo $PACKAGES | tr ' ' ',')" \
    --customize-hook='echo kmsfs-boot > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='mkdir -p "$1/var/log/journal"' \
    --customize-hook='rm -f "$1"/etc/machine-id; : > "$1/etc/machine-id"' \
    --customize-hook="$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-warn-conflicts --no-index --find-links '$wheels' --target \"\$1/opt/kms-emulator\" $WHEELS" \
    bookworm "$tmp" >&2
mv "$tmp" "$tar"
trap - EXIT INT TERM
# Images and wheels of earlier versions of this script are not used again.
for old in "$cache"/guest-*.tar "$cache"/wheels-*; do
    case $old in "$tar"|"$wheels") ;; *) rm -rf "$old" ;; esac
done
echo "$tar"
