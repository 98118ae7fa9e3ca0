#!/usr/bin/env bash
# Several callflow nodes on one machine, to try them out (docs/scaling.md): a throwaway
# PostgreSQL server (tests/postgres.sh), NODES callflow nodes sharing it, and Kamailio as their SIP
# edge (deploy/kamailio/callflow-edge.cfg), all on loopback.
#
#   deploy/cluster.sh start      # prints where everything is, and the folder to stop it with
#   deploy/cluster.sh stop DIR
#
# Settings (environment): NODES (3), EDGE_PORT (5060: the one SIP address the telco and the
# phones use), TELCO (127.0.0.1:5099: the telco gateway outbound calls leave for), BIN (the
# callflow binary; built in release when missing), DATABASE_URL (an existing PostgreSQL database
# instead of a throwaway server), CALLFLOW_STORAGE_URL and CALLFLOW_STORAGE_ENDPOINT (shared
# storage for plugins and recordings, passed to every node; without it each node keeps its own).
# Root credentials come from CALLFLOW_ROOT_ACCOUNT_SID and
# CALLFLOW_ROOT_AUTH_TOKEN when set, else the first node prints the ones it generated.
#
# Needs Debian's postgresql and kamailio (apt-get install postgresql kamailio).
set -euo pipefail
cd "$(dirname "$0")/.."

free_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; t = socket.socket(); t.bind(("127.0.0.1", p)); print(p)'
}

case "${1:-}" in
start)
    NODES=${NODES:-3}
    EDGE_PORT=${EDGE_PORT:-5060}
    TELCO=${TELCO:-127.0.0.1:5099}
    BIN=${BIN:-target/release/callflow}
    command -v kamailio >/dev/null || { echo "cluster.sh: kamailio not found (apt-get install kamailio)" >&2; exit 1; }
    [ -x "$BIN" ] || cargo build --release --locked -p callflow-server
    dir=$(mktemp -d /tmp/callflow-cluster.XXXXXX)
    if [ -z "${DATABASE_URL:-}" ]; then
        eval "$(tests/postgres.sh start)"
        echo "$PGTEST_DIR" >"$dir/postgres"
        DATABASE_URL=${CALLFLOW_TEST_POSTGRES%/*}/callflow
        psql "$CALLFLOW_TEST_POSTGRES" -q -c "CREATE DATABASE callflow"
    fi
    : >"$dir/dispatcher.list"
    for i in $(seq 1 "$NODES"); do
        http=$(free_port) sip=$(free_port)
        mkdir -p "$dir/node$i"
        cat >"$dir/node$i/callflow.toml" <<EOF
[cluster]
node = "node$i"

[[trunks]]
name = "edge"
host = "127.0.0.1"
port = $EDGE_PORT
inbound_sources = ["127.0.0.1/32"]
EOF
        CALLFLOW_DATABASE_URL=$DATABASE_URL setsid "$BIN" serve --config "$dir/node$i/callflow.toml" \
            --http "127.0.0.1:$http" --sip "127.0.0.1:$sip" --data "$dir/node$i" \
            >"$dir/node$i/callflow.log" 2>&1 &
        echo $! >"$dir/node$i/pid"
        echo "1 sip:127.0.0.1:$sip 0 0" >>"$dir/dispatcher.list"
        echo "node$i  API http://127.0.0.1:$http  SIP 127.0.0.1:$sip  log $dir/node$i/callflow.log"
        # one at a time: the first creates the schema and the root account
        for _ in $(seq 1 100); do
            curl -fsS "http://127.0.0.1:$http/health" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    echo "2 sip:$TELCO 0 0" >>"$dir/dispatcher.list"
    modules=$(ls -d /usr/lib/*/kamailio/modules 2>/dev/null | head -n 1)
    setsid kamailio -f deploy/kamailio/callflow-edge.cfg -L "$modules" \
        -A "DISPATCHER_LIST=\"$dir/dispatcher.list\"" -l "udp:127.0.0.1:$EDGE_PORT" \
        -DD -E -Y "$dir" -P "$dir/kamailio.pid" -m 64 -M 8 >"$dir/kamailio.log" 2>&1 &
    echo $! >"$dir/kamailio.pid.shell"
    echo "edge   SIP 127.0.0.1:$EDGE_PORT (calls in: any number provisioned through any node's API;"
    echo "       calls out leave for $TELCO)  log $dir/kamailio.log"
    echo "database $DATABASE_URL"
    grep -h -A2 "root account" "$dir"/node1/callflow.log || true
    echo "stop with: deploy/cluster.sh stop $dir"
    ;;
stop)
    dir=${2:?the folder start printed}
    for pidfile in "$dir"/node*/pid "$dir/kamailio.pid.shell"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 1
    if [ -f "$dir/postgres" ]; then tests/postgres.sh stop "$(cat "$dir/postgres")"; fi
    echo "stopped; logs are in $dir"
    ;;
*)
    echo "usage: deploy/cluster.sh start | stop DIR" >&2
    exit 2
    ;;
esac
