#!/usr/bin/env bash
# Installs what building and testing kmsfs needs, only when it is missing:
# Debian packages (libfuse3, libcurl, OpenSSL headers, fuse3 tools) and the
# Python packages the tests drive (moto's KMS emulator, the AWS CLI and the
# AWS Encryption SDK CLI, pytest). Idempotent; quiet when all is present.
set -euo pipefail

need_apt=()
for pkg in libfuse3-dev fuse3 libssl-dev libcurl4-openssl-dev pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# Tools the tests drive: setpriv/prlimit (util-linux), useradd (passwd),
# groff and man (the man page renders cleanly), systemd-analyze (the unit
# files verify), python3-seccomp (the service's syscall filter is tried),
# prometheus (a real server scrapes metrics=; promtool checks the format),
# strace (injects a ring's failure into one io_uring thread).
for pkg in groff-base man-db systemd python3-seccomp prometheus strace; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
for cmd in setpriv:util-linux useradd:passwd; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || need_apt+=("${cmd##*:}")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "deps: installing ${need_apt[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then echo "deps: need root to install ${need_apt[*]}" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
need_pip=()
$PY -c 'import moto.server, flask_cors' 2>/dev/null || need_pip+=("moto[server]")
command -v aws >/dev/null 2>&1 || need_pip+=("awscli")
command -v aws-encryption-cli >/dev/null 2>&1 || need_pip+=("aws-encryption-sdk-cli")
$PY -c 'import pytest' 2>/dev/null || need_pip+=("pytest")
if [ "${#need_pip[@]}" -gt 0 ]; then
    echo "deps: pip installing ${need_pip[*]}" >&2
    $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore "${need_pip[@]}"
fi
