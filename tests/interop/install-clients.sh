#!/bin/sh
# install-clients.sh: installs the ACME clients and tools that
# tests/interop.rs drives and Pebble, the upstream CA of tests/upstream_pebble.rs (Debian/Ubuntu). Idempotent: runs apt-get only
# when a package is missing, and `apt-get update` only then. Needs root for
# that; prints what it did.
set -eu

PACKAGES="certbot lego uacme dehydrated pebble openssl python3 curl ca-certificates util-linux prometheus shellcheck"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *" ok installed") ;;
        *) missing="$missing $pkg" ;;
    esac
done

if [ -z "$missing" ]; then
    echo "install-clients: already installed: $PACKAGES"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-clients: missing packages:$missing; run this script as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-clients: missing:$missing"
echo "install-clients: apt-get update"
timeout 600 apt-get update -q
echo "install-clients: apt-get install -y$missing"
# shellcheck disable=SC2086 # word splitting of the package list is wanted
timeout 1200 apt-get install -y -q --no-install-recommends $missing
for bin in certbot lego uacme dehydrated pebble openssl promtool; do
    command -v "$bin" >/dev/null || { echo "install-clients: $bin still missing" >&2; exit 1; }
done
echo "install-clients: done"
