#!/usr/bin/env bash
# Several nodes (issue 17): 1, 2 and 3 callflow nodes on one PostgreSQL server, behind Kamailio
# as the edge (deploy/kamailio/callflow-edge.cfg), with SIPp's uac_load.xml calling through the
# edge at a fixed rate. For each node count, in one run: ok and failed calls, the rate carried,
# p99 INVITE->200, and CPU per call of the nodes (together and the busiest one), of the
# PostgreSQL server and of the edge. Everything runs on this machine, so the total is bound by
# its cores; the per-node cost is what scales.
#
#   bench/cluster.sh                          # NODES="1 2 3" RATE=100 DURATION=15 HOLD_MS=0
#   NODES="1 2" RATE=200 HOLD_MS=5000 bench/cluster.sh   # 1,000 calls up at once
#
# BIN: a callflow binary (default: build target/release/callflow). Needs sipp, kamailio,
# PostgreSQL's binaries (Debian: sip-tester, kamailio, postgresql; installed when missing), curl,
# python3. Every wait and every run is bounded.
set -euo pipefail
export LC_ALL=C

NODES=${NODES:-"1 2 3"}
RATE=${RATE:-100}
DURATION=${DURATION:-15}
HOLD_MS=${HOLD_MS:-0}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}
STARTUP_TIMEOUT_S=30
NUMBER="+15005550006"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
SCENARIO=$ROOT/tests/sipp/uac_edge_bye.xml
. "$ROOT/bench/lib.sh"

[[ $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be whole calls per second"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be whole seconds"
for n in $NODES; do [[ $n =~ ^[1-9]$ ]] || die "NODES are counts from 1 to 9: '$n'"; done
command -v sipp >/dev/null 2>&1 || install sip-tester
KAMAILIO=$(PATH="$PATH:/usr/sbin:/sbin" command -v kamailio || true)
[ -n "$KAMAILIO" ] || { install kamailio; KAMAILIO=$(PATH="$PATH:/usr/sbin:/sbin" command -v kamailio); }
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || install postgresql
MODULES=$(ls -d /usr/lib/*/kamailio/modules 2>/dev/null | head -n 1)
build_callflow

TMP=$(mktemp -d "${TMPDIR:-/tmp}/callflow-clusterbench.XXXXXX")
PIDS=""
PG_DIR=""
cleanup() {
    stop_pids $PIDS
    [ -z "$PG_DIR" ] || "$ROOT/tests/postgres.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for v in $(compgen -e | grep '^CALLFLOW_' || true); do unset "$v"; done

eval "$("$ROOT/tests/postgres.sh" start)"
PG_DIR=$PGTEST_DIR
PG_SERVER=$CALLFLOW_TEST_POSTGRES
TWIML_PORT=$(free_port)
python3 "$ROOT/bench/twiml_app.py" "$TWIML_PORT" \
    --document '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="60"/></Response>' \
    >"$OUT/twiml.log" 2>&1 &
PIDS="$PIDS $!"
wait_http "http://127.0.0.1:$TWIML_PORT/voice" "$!" "TwiML server" "$OUT/twiml.log"

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
ACCOUNT_SID="AC$(hex 16)"
AUTH_TOKEN=$(hex 16)
CLK_TCK=$(getconf CLK_TCK)
ticks() { # pids... -> utime + stime, in clock ticks, summed
    local pid
    for pid in "$@"; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        awk '{ r = substr($0, index($0, ")") + 2); split(r, f, " "); t += f[12] + f[13] } END { print t + 0 }'
}
postgres_pids() { # the postmaster and its processes (one per connection, and the workers)
    local main
    main=$(head -n 1 "$PG_DIR/data/postmaster.pid")
    echo "$main" $(pgrep -P "$main" || true)
}
csv_field() {
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { v = $c } END { print (c && v != "" ? v : "?") }' "$1"
}

ROWS=$OUT/rows.txt
: >"$ROWS"
status=0
for n in $NODES; do
    db="bench_$n"
    psql "$PG_SERVER" -q -c "CREATE DATABASE $db" >/dev/null
    url="${PG_SERVER%/*}/$db"
    edge=$(free_port)
    node_pids=""
    : >"$TMP/dispatcher-$n.list"
    for i in $(seq 1 "$n"); do
        HTTP_PORT=$(free_port)
        sip=$(free_port)
        cat >"$TMP/node$n-$i.toml" <<EOF
[cluster]
node = "node$i"

[[trunks]]
name = "edge"
host = "127.0.0.1"
port = $edge
inbound_sources = ["127.0.0.1/32"]
cps = 1000.0
max_channels = 0

[sip]
rtp_port_min = $((20000 + i * 4000))
rtp_port_max = $((23998 + i * 4000))
EOF
        BENCH_NAME="n$n-node$i" start_callflow "$sip" "$TMP/node$n-$i.toml" \
            CALLFLOW_DATABASE_URL="$url" CALLFLOW_WEBHOOK_ALLOW_PRIVATE=true
        node_pids="$node_pids $CALLFLOW_PID"
        PIDS="$PIDS $CALLFLOW_PID"
        echo "1 sip:127.0.0.1:$sip 0 0" >>"$TMP/dispatcher-$n.list"
        if [ "$i" = 1 ]; then create_number "$NUMBER" "http://127.0.0.1:$TWIML_PORT/voice"; fi
    done
    mkdir -p "$TMP/kam-$n"
    "$KAMAILIO" -f "$ROOT/deploy/kamailio/callflow-edge.cfg" -L "$MODULES" \
        -A "DISPATCHER_LIST=\"$TMP/dispatcher-$n.list\"" -l "udp:127.0.0.1:$edge" -DD -E \
        -Y "$TMP/kam-$n" -P "$TMP/kam-$n/k.pid" -m 256 -M 16 >"$OUT/edge-$n.log" 2>&1 &
    kam=$!
    PIDS="$PIDS $kam"
    # every node counted by every other (their shares), and a call through the edge works
    sleep 3
    dir="$OUT/nodes-$n"
    mkdir -p "$dir/probe"
    ok=0
    for _ in $(seq 20); do
        if (cd "$dir/probe" && timeout 20 sipp "127.0.0.1:$edge" -sf "$SCENARIO" -s "$NUMBER" -m 1 \
            -i 127.0.0.1 -p "$(free_port)" -mp "$(free_port)" -timeout 5s -timeout_error -nostdin \
            >stdout.log 2>stderr.log); then ok=1; break; fi
        sleep 0.5
    done
    [ "$ok" = 1 ] || die "no call got through the edge to $n node(s) (see $dir/probe, $OUT)"
    calls=$((RATE * DURATION))
    secs=$((DURATION * 2 + HOLD_MS / 1000 + 30))
    edge_pids="$kam $(pgrep -P "$kam" | tr '\n' ' ')"
    pg0=$(ticks $(postgres_pids)); e0=$(ticks $edge_pids)
    declare -A c0=()
    for p in $node_pids; do c0[$p]=$(ticks "$p"); done
    log "$n node(s): $calls calls at $RATE/s through the edge (hold $HOLD_MS ms)"
    rc=0
    (cd "$dir" && timeout $((secs + 30)) sipp "127.0.0.1:$edge" -sf "$SCENARIO" -s "$NUMBER" \
        -r "$RATE" -m "$calls" -l $((RATE * (HOLD_MS / 1000 + 1) * 4 + 100)) -d "$HOLD_MS" \
        -i 127.0.0.1 -p "$(free_port)" -mp "$(free_port)" -timeout "${secs}s" -timeout_error -nostdin \
        -trace_stat -stf stat.csv -fd 5 -trace_rtt -rtt_freq 1 -trace_err -error_file errors.log \
        >stdout.log 2>stderr.log) || rc=$?
    pg1=$(ticks $(postgres_pids)); e1=$(ticks $edge_pids)
    total=0; busiest=0
    for p in $node_pids; do
        d=$(($(ticks "$p") - c0[$p])); total=$((total + d)); [ "$d" -gt "$busiest" ] && busiest=$d
    done
    unset c0
    ok=$(csv_field "$dir/stat.csv" 'SuccessfulCall(C)'); failed=$(csv_field "$dir/stat.csv" 'FailedCall(C)')
    p99=$( (cat "$dir"/*_rtt.csv 2>/dev/null || true) | awk -F';' '$3 == "invite" || $3 == "1" { print $2 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "?"; exit } i = int(NR * 0.99); if (i < NR * 0.99) i++; print v[i] }')
    echo "$n $calls $ok $failed $p99 $total $busiest $((pg1 - pg0)) $((e1 - e0)) $rc" >>"$ROWS"
    [ "$rc" = 0 ] && [ "$failed" = 0 ] || { log "warning: $n node(s): SIPp exited $rc, $failed failed"; status=1; }
    stop_pids $node_pids $kam
done

{
    echo "callflow cluster benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs;" \
        "$RATE calls/s for $DURATION s through the edge, hold $HOLD_MS ms; raw output in $OUT"
    echo
    echo "| nodes | calls | ok | failed | p99 INVITE→200 | nodes' CPU per call | busiest node's CPU per call | PostgreSQL CPU per call | edge CPU per call |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    while read -r n calls ok failed p99 total busiest pg edge rc; do
        us() { [ "$ok" -gt 0 ] 2>/dev/null && echo "$(( $1 * 1000000 / CLK_TCK / ok )) µs" || echo "?"; }
        echo "| $n | $calls | $ok | $failed | $p99 ms | $(us "$total") | $(us "$busiest") | $(us "$pg") | $(us "$edge") |"
    done <"$ROWS"
} | tee "$OUT/report.md"
exit $status
