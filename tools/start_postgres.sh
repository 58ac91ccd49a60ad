#!/usr/bin/env bash
# A throw-away PostgreSQL server on loopback, for the storage tests (CI and developers).
#
#   tools/start_postgres.sh start DATADIR [PORT]   # prints the SQLAlchemy URL as its last line
#   tools/start_postgres.sh stop  DATADIR
#
# start: installs Debian's postgresql package if no server binaries are found (as root, with apt-get),
# creates a cluster in DATADIR (trust authentication, superuser "immunetwin", listening on 127.0.0.1
# only, socket in DATADIR, fsync off: the data is disposable) and starts it. As root, the server runs
# as the unprivileged "postgres" user (created if missing): PostgreSQL refuses to run as root.
# DATADIR's parent must be reachable by that user (e.g. a folder directly under /tmp).
# Example (.ci/run):
#   export IMMUNETWIN_TEST_POSTGRES_URL="$(tools/start_postgres.sh start /tmp/immunetwin-pg 55432 | tail -n 1)"
#   trap 'tools/start_postgres.sh stop /tmp/immunetwin-pg' EXIT
set -euo pipefail

usage() { echo "usage: $0 start DATADIR [PORT] | stop DATADIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
datadir=$(realpath -m "$2")
port=${3:-55432}
superuser=immunetwin

find_bin() {  # the folder with initdb, pg_ctl and postgres
    local candidate
    for candidate in "$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")" \
        $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$candidate/initdb" ] && [ -x "$candidate/pg_ctl" ] && [ -x "$candidate/postgres" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_server() {
    echo "start_postgres.sh: no PostgreSQL server binaries found" >&2
    bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" start_postgres.sh postgresql
}

as_owner() {  # run a server command as the cluster's owner
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin
    bin=$(find_bin) || { install_server; bin=$(find_bin); }
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    mkdir -p "$datadir"
    [ "$(id -u)" -eq 0 ] && chown postgres "$datadir"
    chmod 700 "$datadir"
    if [ ! -f "$datadir/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$datadir" -U "$superuser" -A trust -E UTF8 --locale=C.UTF-8 >&2
    fi
    if as_owner "$bin/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
        echo "start_postgres.sh: already running in $datadir" >&2
    else
        as_owner "$bin/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 start -o \
            "-c listen_addresses=127.0.0.1 -p $port -k $datadir -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200" >&2
    fi
    echo "postgresql+psycopg://$superuser@127.0.0.1:$port/postgres"
}

stop() {
    local bin
    bin=$(find_bin) || exit 0
    [ -f "$datadir/PG_VERSION" ] || exit 0
    as_owner "$bin/pg_ctl" -D "$datadir" -m fast -w stop >&2 || true
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
