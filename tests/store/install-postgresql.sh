#!/bin/sh
# install-postgresql.sh: installs Debian's PostgreSQL server binaries
# (initdb, pg_ctl, postgres, psql) for the PostgreSQL store's tests
# (testkit/src/postgres.rs starts a throw-away server of its own from them).
#
# Idempotent: does nothing when /usr/lib/postgresql/*/bin/initdb is there.
# Otherwise, as root: tells postgresql-common not to create (and start) a
# "main" cluster, then installs postgresql-15, or Debian's default
# `postgresql` where 15 is not packaged. Prints what it did.
set -eu

say() { echo "install-postgresql: $*"; }

for initdb in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$initdb" ]; then
        say "up to date: $initdb"
        exit 0
    fi
done

if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL's server binaries are missing; run this script as root (apt-get install postgresql)" >&2
    exit 1
fi

# The tests run servers of their own: no system cluster.
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
if apt-cache show postgresql-15 >/dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends postgresql-15
else
    apt-get install -y -q --no-install-recommends postgresql
fi
say "installed: $(ls /usr/lib/postgresql/*/bin/initdb)"
