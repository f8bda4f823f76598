#!/bin/sh
# tools/deb.sh BIN OUTDIR: packs the built kmsfs as a Debian package,
# OUTDIR/kmsfs_VERSION_ARCH.deb, and prints its path. `make deb` runs it.
#
# It does not build: BIN must be the release binary `make build` made, with
# the Swift runtime linked in (--static-swift-stdlib), so the package needs
# nothing from /opt/swift. The tree is `make install DESTDIR=... PREFIX=/usr`
# (the binary in /usr/bin, the mount helper in /sbin, the man page, the docs
# and example units in /usr/share/doc/kmsfs). Depends: is fuse3 (/dev/fuse,
# fusermount3, mount.fuse3) and the package of every shared library the
# binary loads, found with ldd and dpkg -S as dpkg-shlibdeps would.
set -eu
# dpkg-deb wants DEBIAN at 0755 and its files at 0644, whatever the build
# host's umask (CIS's 027 would make it refuse the package).
umask 022

bin=${1:?usage: tools/deb.sh BIN OUTDIR}
out=${2:-.}
root=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "make deb: $1" >&2; exit 1; }

[ -x "$bin" ] || die "$bin is missing; run make first (or give BIN=path/to/kmsfs)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is not installed (apt-get install dpkg)"

# The binary must not need the toolchain: no Swift runtime library, no
# run path into it.
dynamic=$(readelf -d "$bin") || die "readelf -d $bin failed (apt-get install binutils)"
if echo "$dynamic" | grep -Eq 'NEEDED.*\[lib(swift|Foundation|dispatch|BlocksRuntime)'; then
    die "$bin loads the Swift runtime; build it with --static-swift-stdlib (make build does)"
fi
if echo "$dynamic" | grep -E 'R(UN)?PATH' | grep -q .; then
    die "$bin has a run path ($(echo "$dynamic" | grep -E 'R(UN)?PATH' | sed 's/.*\[//; s/\]//')); build it with make build"
fi

version=$(sed -n 's/^public let kmsfsVersion = "\(.*\)"$/\1/p' "$root/Sources/AWS/Version.swift")
[ -n "$version" ] || die "no kmsfsVersion in Sources/AWS/Version.swift"
built=$("$bin" --version 2>/dev/null) || die "$bin --version failed"
[ "$built" = "kmsfs $version" ] || die "$bin says '$built' but the source says $version; run make first"

arch=$(dpkg --print-architecture)
deb="$out/kmsfs_${version}_${arch}.deb"
stage=$(mktemp -d "${TMPDIR:-/tmp}/kmsfs-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM

make -s -C "$root" install DESTDIR="$stage/root" PREFIX=/usr BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")" >/dev/null
gzip -9n "$stage/root/usr/share/man/man8/kmsfs.8"
# Debian ships binaries without their debug sections (a sixth of the
# size); the symbol table stays, for the Swift runtime's backtraces.
strip --strip-debug "$stage/root/usr/bin/kmsfs"

# Depends: the package holding each library the binary names (NEEDED),
# where the dynamic loader finds it; what those libraries load in turn is
# their packages' business.
needed=$(echo "$dynamic" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p')
depends=fuse3
for soname in $needed; do
    path=$(ldd "$bin" | awk -v s="$soname" '$1 == s && $2 == "=>" { print $3 }')
    [ -n "$path" ] || case $soname in ld-linux*) continue ;; *) die "ldd does not find $soname" ;; esac
    pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null) || die "no package holds $path"
    pkg=${pkg%%:*}
    case ", $depends, " in *", $pkg, "*) ;; *) depends="$depends, $pkg" ;; esac
done

size=$(du -sk "$stage/root" | cut -f1)
mkdir -p "$stage/root/DEBIAN"
cat > "$stage/root/DEBIAN/control" <<EOF
Package: kmsfs
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-kmsfs maintainers <root@localhost>}
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Description: serve KMS-encrypted secrets as plain, read-only files
 kmsfs mirrors a directory of NAME.encrypted files as a FUSE filesystem
 (usually at /etc/secrets), decrypting each through AWS KMS when first
 opened, keeping the plaintext only in locked memory and serving it only
 to the users and groups its options name.
 .
 Mount it from fstab (type kmsfs, through /sbin/mount.kmsfs) or with the
 example units in /usr/share/doc/kmsfs/systemd. See man 8 kmsfs and
 /usr/share/doc/kmsfs/guide.md.
EOF
(cd "$stage/root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$stage/root/DEBIAN/md5sums"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zgzip --build "$stage/root" "$deb" >/dev/null
echo "$deb"
