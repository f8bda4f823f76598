#!/usr/bin/env bash
# Builds kmsfs's libfuse adapter (the FUSEBridge target and the CFuse shim)
# against the libfuse3 headers another Debian release ships, by default
# Debian 13's (libfuse 3.17), beside the 3.14 that `make build` uses: libfuse
# 3.17 turned calls kmsfs makes into macros and changed a signature, and a
# build only against 3.14 would not notice the next such change.
#
#   tools/check-libfuse.sh [SUITE]     # SUITE: trixie (default), forky, ...
#
# The package comes through apt from deb.debian.org, signed with the
# archive keyring, into a directory of its own (the machine's apt state is
# left alone); nothing is installed. Says SKIP and exits 0 where the
# archive cannot be reached. Exit status 1: the adapter does not build.
set -euo pipefail
suite="${1:-trixie}"
cd "$(dirname "$0")/.."
SWIFT="${SWIFT:-swift}"
work="$(mktemp -d /tmp/kmsfs-libfuse-XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/pc" "$work/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1"
          -o "Acquire::Languages=none" -o "APT::Sandbox::User=root")
if ! apt-get -qq "${apt_opts[@]}" update >"$work/apt.log" 2>&1 \
   || ! (cd "$work" && apt-get -qq "${apt_opts[@]}" download libfuse3-dev >>"$work/apt.log" 2>&1); then
    echo "check-libfuse: SKIP: Debian $suite's libfuse3-dev could not be fetched:"
    tail -3 "$work/apt.log" | sed 's/^/  /'
    exit 0
fi
deb="$(ls "$work"/libfuse3-dev_*.deb)"
dpkg-deb -x "$deb" "$work/root"
version="$(dpkg-deb -f "$deb" Version)"
cat > "$work/pc/fuse3.pc" <<PC
Name: fuse3
Description: libfuse3 headers of Debian $suite (compile check only)
Version: ${version%%-*}
Libs: -lfuse3
Cflags: -I$work/root/usr/include/fuse3
PC
echo "check-libfuse: building FUSEBridge against Debian $suite's libfuse3-dev $version"
if PKG_CONFIG_PATH="$work/pc" "$SWIFT" build --scratch-path .build-libfuse-check --target FUSEBridge >"$work/build.log" 2>&1; then
    echo "check-libfuse: OK: FUSEBridge builds against libfuse $version"
else
    grep -E "^/.*error:" "$work/build.log" | sort -u | head -20
    echo "check-libfuse: FAILED: FUSEBridge does not build against Debian $suite's libfuse $version"
    exit 1
fi
