#!/bin/sh
# install-clients.sh: installs the ACME clients and tools that
# tests/interop/clients.rs drives, Pebble, the upstream CA of
# tests/upstreams/pebble.rs, and strace for the store's durability test
# (Debian/Ubuntu), haproxy for the replicas test behind a load balancer,
# prometheus (prometheus and promtool) for the metrics and alerting tests
# (tests/acme/metrics.rs, tests/acme/alerts.rs), and BIND 9 (named,
# tsig-keygen, nsupdate, dig) as the authoritative DNS server that Pebble
# validates dns-01 against in tests/upstreams/dns01.rs.
# Idempotent: runs apt-get only
# when a package is missing, and `apt-get update` only then. Needs root for
# that; prints what it did.
#
# Besides Debian's certbot 2.1 it installs today's certbot from PyPI into a
# virtualenv, $ACMEPROXY_CERTBOT_VENV (default /var/tmp/acmeproxy-certbot),
# pinned to CERTBOT_PYPI_VERSION: users run current clients, whose stricter
# parsers (Python cryptography >= 42) see what Debian's does not.
set -eu

PACKAGES="certbot lego uacme dehydrated pebble openssl python3 python3-venv curl ca-certificates util-linux prometheus shellcheck strace haproxy bind9 bind9-utils bind9-dnsutils"
CERTBOT_PYPI_VERSION="5.8.0"
VENV="${ACMEPROXY_CERTBOT_VENV:-/var/tmp/acmeproxy-certbot}"

# Today's certbot in its own virtualenv, after the apt packages (python3-venv).
install_pypi_certbot() {
    if [ "$("$VENV/bin/certbot" --version 2>/dev/null)" = "certbot $CERTBOT_PYPI_VERSION" ]; then
        echo "install-clients: certbot $CERTBOT_PYPI_VERSION (PyPI) already in $VENV"
        return
    fi
    echo "install-clients: certbot $CERTBOT_PYPI_VERSION from PyPI into $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check "certbot==$CERTBOT_PYPI_VERSION"
    "$VENV/bin/certbot" --version
}

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
    install_pypi_certbot
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
for bin in certbot lego uacme dehydrated pebble openssl prometheus promtool strace haproxy named tsig-keygen nsupdate dig; do
    command -v "$bin" >/dev/null || { echo "install-clients: $bin still missing" >&2; exit 1; }
done
install_pypi_certbot
echo "install-clients: done"
