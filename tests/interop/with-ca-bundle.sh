#!/bin/sh
# with-ca-bundle.sh BUNDLE COMMAND [ARGS...]
# Runs COMMAND with BUNDLE in place of the system CA bundle, for clients
# (uacme) that trust only that file. The swap happens by a bind mount in a
# private mount namespace, so the machine's trust store is never changed
# and nothing outside COMMAND sees it. Needs root (unshare -m).
set -eu
SYSTEM_BUNDLE=/etc/ssl/certs/ca-certificates.crt

if [ "${1:-}" != --inside ]; then
    [ $# -ge 2 ] || { echo "usage: $0 BUNDLE COMMAND [ARGS...]" >&2; exit 2; }
    [ -s "$1" ] || { echo "with-ca-bundle: no bundle at $1" >&2; exit 2; }
    [ -f "$SYSTEM_BUNDLE" ] || {
        echo "with-ca-bundle: $SYSTEM_BUNDLE missing (install ca-certificates)" >&2
        exit 2
    }
    exec unshare --mount --propagation private -- "$0" --inside "$@"
fi
shift
bundle=$1
shift
mount --bind "$bundle" "$SYSTEM_BUNDLE"
exec "$@"
