#!/bin/sh
# uacme-hook.sh METHOD TYPE IDENT TOKEN KEY_AUTHORIZATION
# Hook for `uacme -h` in tests/interop/clients.rs. Accepts only http-01: on `begin`
# writes the key authorization to $INTEROP_WEBROOT/TOKEN (served by the
# test's http-01 responder), removes it on `done`/`failed`. Any other
# challenge type is declined (non-zero exit), so uacme picks http-01.
set -eu
[ $# -eq 5 ] || { echo "usage: $0 METHOD TYPE IDENT TOKEN KEY_AUTHORIZATION" >&2; exit 2; }
method=$1 type=$2 token=$4 key_auth=$5
dir=${INTEROP_WEBROOT:?INTEROP_WEBROOT is not set}

[ "$type" = http-01 ] || exit 1
case "$token" in
    "" | *[!A-Za-z0-9_-]*) echo "uacme-hook: bad token '$token'" >&2; exit 1 ;;
esac
case "$method" in
    begin) printf '%s' "$key_auth" > "$dir/$token" ;;
    done | failed) rm -f "$dir/$token" ;;
    *) exit 1 ;;
esac
