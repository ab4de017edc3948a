#!/bin/sh
# lego-dns-hook.sh present|cleanup FQDN VALUE
# Program for lego's `exec` DNS provider (EXEC_PATH) in tests/interop/clients.rs.
# Publishes a dns-01 TXT value through the mock DNS records directory
# $INTEROP_DNS_RECORDS: the file named after FQDN (lower case, no trailing
# dot) holds one TXT value per line.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 present|cleanup FQDN VALUE" >&2; exit 2; }
action=$1 fqdn=$2 value=${3:-}
dir=${INTEROP_DNS_RECORDS:?INTEROP_DNS_RECORDS is not set}

name=$(printf '%s' "${fqdn%.}" | tr '[:upper:]' '[:lower:]')
case "$name" in
    "" | .* | */*) echo "lego-dns-hook: bad name '$fqdn'" >&2; exit 1 ;;
esac
file="$dir/$name"
tmp="$file.tmp.$$"

case "$action" in
    present)
        # write aside and rename, so the DNS server never reads half a file
        { [ -f "$file" ] && cat "$file"; printf '%s\n' "$value"; } > "$tmp"
        mv "$tmp" "$file"
        ;;
    cleanup)
        if [ -f "$file" ]; then
            grep -vxF -e "$value" "$file" > "$tmp" || true
            if [ -s "$tmp" ]; then mv "$tmp" "$file"; else rm -f "$tmp" "$file"; fi
        fi
        ;;
    *) ;; # lego may call other actions (e.g. timeout); nothing to do
esac
