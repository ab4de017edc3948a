#!/bin/sh
# dns01-exec-hook.sh: the exec provider's test script (tests/upstreams/dns01.rs),
# with lego's exec-provider contract: `present|cleanup FQDN VALUE`, FQDN with
# its trailing dot. It writes into the test's BIND with nsupdate, signed with
# the TSIG key in $DNS01_NSUPDATE_KEY (hmac-sha256:name:secret), to the server
# $DNS01_SERVER ($DNS01_PORT). Each call is logged to $DNS01_HOOK_LOG.
set -eu
action="$1" fqdn="$2" value="$3"
case "$action" in
    present) op="update add $fqdn 60 IN TXT \"$value\"" ;;
    cleanup) op="update delete $fqdn IN TXT \"$value\"" ;;
    *) echo "dns01-exec-hook: unknown action $action" >&2; exit 2 ;;
esac
echo "$action $fqdn $value" >> "${DNS01_HOOK_LOG:-/dev/null}"
nsupdate -y "$DNS01_NSUPDATE_KEY" <<END
server $DNS01_SERVER $DNS01_PORT
$op
send
END
