#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the tests: Debian's postgresql binaries, a
# cluster in a temporary folder, a free port, fsync off (nothing here must survive a crash of
# the machine). PostgreSQL will not run as root, so as root the cluster belongs to the
# `postgres` user the package creates.
#
#   eval "$(tests/postgres.sh start)"   # exports CALLFLOW_TEST_POSTGRES=postgres://… and PGTEST_DIR
#   tests/postgres.sh stop "$PGTEST_DIR"
#   tests/postgres.sh pause "$PGTEST_DIR"; tests/postgres.sh resume "$PGTEST_DIR"  # an outage
#
# Every step is bounded in time.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "postgres.sh: PostgreSQL's binaries not found (apt-get install postgresql)" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
start)
    dir=$(mktemp -d /tmp/callflow-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    timeout 120 bash -c "$(declare -f as_owner); as_owner '$bin/initdb' -D '$dir/data' -U callflow --auth=trust -E UTF8 --locale=C.UTF-8" >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    echo "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on -c max_connections=300" >"$dir/options"
    "$0" resume "$dir"
    echo "export CALLFLOW_TEST_POSTGRES=postgres://callflow@127.0.0.1:$port/postgres PGTEST_DIR=$dir"
    ;;
resume)
    dir=${2:?the folder start printed}
    timeout 60 bash -c "$(declare -f as_owner); as_owner '$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -t 50 \
        -o \"$(cat "$dir/options")\" start" >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
    ;;
pause)
    dir=${2:?the folder start printed}
    timeout 60 bash -c "$(declare -f as_owner); as_owner '$bin/pg_ctl' -D '$dir/data' -m fast -w -t 50 stop" >/dev/null
    ;;
stop)
    dir=${2:?the folder start printed}
    timeout 60 bash -c "$(declare -f as_owner); as_owner '$bin/pg_ctl' -D '$dir/data' -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: tests/postgres.sh start | stop DIR | pause DIR | resume DIR" >&2
    exit 2
    ;;
esac
