#!/usr/bin/env bash
# install.sh: installs acmeproxy as a systemd service on a Debian-like host.
# Run ./install.sh --help for the details. Idempotent: a second run changes
# nothing, and an existing /etc/acmeproxy/ca.json is never overwritten.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: ./install.sh [--binary PATH] [--dns-name NAME] [--help]

Installs acmeproxy:
  $DESTDIR$PREFIX/bin/acmeproxy               the binary (0755)
  $DESTDIR/etc/acmeproxy/ca.json              a starter configuration (0640), only if
                                              there is none: softcas + sled, ":443",
                                              metrics on 127.0.0.1:9123
  $DESTDIR/var/lib/acmeproxy                  the data directory (0700)
  $DESTDIR$UNITDIR/acmeproxy.service          the hardened systemd unit (0644)
With DESTDIR empty it also creates the system user and group "acmeproxy",
gives them the data directory, and runs `systemctl daemon-reload` and
`systemctl enable acmeproxy` when systemd is running. It never starts the
service: check the configuration, then `systemctl start acmeproxy`.

Options:
  --binary PATH    install this binary (a release build) instead of building
                   with `cargo install --path . --locked`
  --dns-name NAME  the server's name in the starter ca.json (default: hostname -f)
  --help           print this help

Environment:
  PREFIX   install prefix of the binary (default /usr/local)
  DESTDIR  staging root for packaging or unprivileged tests (default empty:
           install into the running system, as root)
  UNITDIR  where the unit goes (default /etc/systemd/system)
EOF
}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-/etc/systemd/system}
BINARY=""
DNS_NAME=""
SERVICE_USER=acmeproxy
CONF_DIR=/etc/acmeproxy
DATA_DIR=/var/lib/acmeproxy
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || die "--binary needs a path"; BINARY=$2; shift 2 ;;
        --binary=*) BINARY=${1#--binary=}; shift ;;
        --dns-name) [ $# -ge 2 ] || die "--dns-name needs a name"; DNS_NAME=$2; shift 2 ;;
        --dns-name=*) DNS_NAME=${1#--dns-name=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path: $PREFIX" ;; esac
case "$UNITDIR" in /*) ;; *) die "UNITDIR must be an absolute path: $UNITDIR" ;; esac
if [ -n "$DESTDIR" ]; then
    case "$DESTDIR" in /*) ;; *) die "DESTDIR must be an absolute path: $DESTDIR" ;; esac
    say "DESTDIR=$DESTDIR: staging only (no user, no ownership changes, no systemctl)"
elif [ "$(id -u)" != 0 ]; then
    die "installing into the system needs root (or set DESTDIR=/some/dir to stage)"
fi

UNIT_SRC=$SRC_DIR/contrib/systemd/acmeproxy.service
[ -f "$UNIT_SRC" ] || die "missing $UNIT_SRC (run install.sh from the source tree)"

# 1. The binary: given, or built into a temporary root.
BUILD_ROOT=""
UNIT_TMP=""
cleanup() {
    if [ -n "$BUILD_ROOT" ]; then rm -rf "$BUILD_ROOT"; fi
    if [ -n "$UNIT_TMP" ]; then rm -f "$UNIT_TMP"; fi
}
trap cleanup EXIT
if [ -z "$BINARY" ]; then
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup.rs) or pass --binary PATH"
    BUILD_ROOT=$(mktemp -d)
    say "building: cargo install --path $SRC_DIR --locked --root $BUILD_ROOT"
    cargo install --quiet --path "$SRC_DIR" --locked --root "$BUILD_ROOT"
    BINARY=$BUILD_ROOT/bin/acmeproxy
fi
if [ ! -f "$BINARY" ] || [ ! -x "$BINARY" ]; then
    die "not an executable file: $BINARY"
fi

# Copies $1 to $2 with mode $3 unless $2 already has the same content and mode.
install_file() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
        say "unchanged: $dst"
    else
        install -D -m "$mode" "$src" "$dst"
        say "installed: $dst ($mode)"
    fi
}

# 2. The service user and group (system installs only).
if [ -z "$DESTDIR" ]; then
    if getent group "$SERVICE_USER" >/dev/null; then
        say "group $SERVICE_USER exists"
    else
        groupadd --system "$SERVICE_USER"
        say "created system group $SERVICE_USER"
    fi
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER exists"
    else
        useradd --system --gid "$SERVICE_USER" --home "$DATA_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "acmeproxy ACME RA" "$SERVICE_USER"
        say "created system user $SERVICE_USER"
    fi
else
    say "skipped: creating user $SERVICE_USER (DESTDIR is set)"
fi

# 3. The binary.
BIN_DST=$DESTDIR$PREFIX/bin/acmeproxy
install_file "$BINARY" "$BIN_DST" 0755

# 4. The configuration directory and a starter ca.json.
CONF_DST=$DESTDIR$CONF_DIR
if [ -d "$CONF_DST" ]; then
    say "exists: $CONF_DST"
else
    install -d -m 0750 "$CONF_DST"
    say "created: $CONF_DST (0750)"
fi
if [ -z "$DESTDIR" ]; then
    chown "root:$SERVICE_USER" "$CONF_DST"
fi
CONF_FILE=$CONF_DST/ca.json
if [ -e "$CONF_FILE" ]; then
    say "kept existing $CONF_FILE (never overwritten)"
else
    if [ -z "$DNS_NAME" ]; then
        DNS_NAME=$(hostname -f 2>/dev/null || hostname 2>/dev/null || echo localhost)
    fi
    case "$DNS_NAME" in
        ''|*[!A-Za-z0-9.-]*) die "not a DNS name: '$DNS_NAME' (pass --dns-name NAME)" ;;
    esac
    NEW_CONF=$(mktemp "$CONF_DST/.ca.json.XXXXXX")
    cat >"$NEW_CONF" <<EOF
{
  "address": ":443",
  "dnsNames": ["$DNS_NAME"],
  "dataDir": "$DATA_DIR",
  "db": {"type": "sled"},
  "logger": {"format": "text"},
  "metrics": {"enabled": true, "address": "127.0.0.1:9123"},
  "authority": {
    "type": "softcas",
    "config": {"certlifetime": 90},
    "provisioners": [{"type": "ACME", "name": "acme"}]
  },
  "validation": {"httpPort": 80, "tlsAlpnPort": 443, "resolvers": [], "timeoutSeconds": 15}
}
EOF
    if ! "$BIN_DST" check-config "$NEW_CONF" >/dev/null; then
        rm -f "$NEW_CONF"
        die "the starter configuration does not validate"
    fi
    chmod 0640 "$NEW_CONF"
    if [ -z "$DESTDIR" ]; then
        chown "root:$SERVICE_USER" "$NEW_CONF"
    fi
    mv "$NEW_CONF" "$CONF_FILE"
    say "wrote: $CONF_FILE (0640; dnsNames [\"$DNS_NAME\"], softcas + sled, metrics on 127.0.0.1:9123)"
fi

# 5. The data directory.
DATA_DST=$DESTDIR$DATA_DIR
if [ -d "$DATA_DST" ]; then
    say "exists: $DATA_DST"
else
    install -d -m 0700 "$DATA_DST"
    say "created: $DATA_DST (0700)"
fi
if [ "$(stat -c %a "$DATA_DST")" != 700 ]; then
    chmod 0700 "$DATA_DST"
    say "set mode 0700 on $DATA_DST"
fi
if [ -z "$DESTDIR" ] && [ "$(stat -c %U:%G "$DATA_DST")" != "$SERVICE_USER:$SERVICE_USER" ]; then
    chown "$SERVICE_USER:$SERVICE_USER" "$DATA_DST"
    say "gave $DATA_DST to $SERVICE_USER"
fi

# 6. The systemd unit, pointing at the installed binary.
UNIT_TMP=$(mktemp)
sed "s|/usr/local/bin/acmeproxy|$PREFIX/bin/acmeproxy|g" "$UNIT_SRC" >"$UNIT_TMP"
UNIT_DST=$DESTDIR$UNITDIR/acmeproxy.service
unit_changed=no
if [ -f "$UNIT_DST" ] && cmp -s "$UNIT_TMP" "$UNIT_DST"; then
    say "unchanged: $UNIT_DST"
else
    install -D -m 0644 "$UNIT_TMP" "$UNIT_DST"
    unit_changed=yes
    say "installed: $UNIT_DST (0644)"
fi

# 7. Enable (never start) the service.
if [ -n "$DESTDIR" ]; then
    say "skipped: systemctl daemon-reload/enable (DESTDIR is set)"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    if [ "$unit_changed" = yes ]; then
        systemctl daemon-reload
        say "ran: systemctl daemon-reload"
    fi
    if systemctl is-enabled --quiet acmeproxy 2>/dev/null; then
        say "already enabled: acmeproxy.service"
    else
        systemctl enable acmeproxy
        say "ran: systemctl enable acmeproxy"
    fi
else
    say "skipped: systemctl (systemd is not running)"
fi

say "done. Next: edit dnsNames in $CONF_DIR/ca.json if needed, then"
say "  $PREFIX/bin/acmeproxy check-config $CONF_DIR/ca.json && systemctl start acmeproxy"
say "  clients trust $DATA_DIR/softcas/root.crt (created at first start)"
