#!/usr/bin/env bash
# API benchmark (issue 2): requests per second of `GET /Calls/{Sid}.json` and `POST /Calls.json`
# against `callflow serve` on SQLite, next to a bare axum handler (host/api/examples/bare.rs)
# measured in the same run, with wrk. Loopback only; every step is bounded in time; both servers
# are stopped on exit.
#
#   bench/api.sh                      # 10 s per measurement
#   DURATION=30 CONNECTIONS=64 bench/api.sh
#
# Settings (environment): DURATION (s, default 10), WARMUP (s, default 2), THREADS (wrk threads,
# default 2), CONNECTIONS (default 32), OUT (folder for raw wrk output, default
# target/bench/api-<time>). Needs curl and wrk (installed with apt-get when missing and root).
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}
STARTUP_TIMEOUT_S=30

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/api-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# ---- tools ------------------------------------------------------------------------------------
command -v wrk >/dev/null 2>&1 || install wrk
command -v wrk >/dev/null 2>&1 || die "wrk not found after installing it"
command -v curl >/dev/null 2>&1 || die "curl is needed"

# ---- build ------------------------------------------------------------------------------------
log "building (release): callflow and the bare baseline"
timeout "$BUILD_TIMEOUT_S" cargo build --release --locked \
    -p callflow-server -p callflow-api --bin callflow --example bare >&2 \
    || die "cargo build failed or took more than ${BUILD_TIMEOUT_S} s"
CALLFLOW_BIN=$ROOT/target/release/callflow
BARE_BIN=$ROOT/target/release/examples/bare
[ -x "$CALLFLOW_BIN" ] && [ -x "$BARE_BIN" ] || die "built binaries not found"

# ---- servers ----------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callflow-bench.XXXXXX")
CALLFLOW_PID=""
BARE_PID=""
cleanup() {
    stop_pids $CALLFLOW_PID $BARE_PID
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
ACCOUNT_SID="AC$(hex 16)"
AUTH_TOKEN=$(hex 16)
AUTH_HEADER="Authorization: Basic $(printf '%s:%s' "$ACCOUNT_SID" "$AUTH_TOKEN" | base64 -w0)"

CALLFLOW_PORT=$(free_port)
BARE_PORT=$(free_port)
CALLFLOW_URL="http://127.0.0.1:$CALLFLOW_PORT"
BARE_URL="http://127.0.0.1:$BARE_PORT"

# Settings come only from the flags and variables below, not from the caller's CALLFLOW_*.
for v in $(compgen -e | grep '^CALLFLOW_' || true); do unset "$v"; done
log "starting callflow on $CALLFLOW_URL (data in $TMP/data)"
RUST_LOG=warn \
    CALLFLOW_ROOT_ACCOUNT_SID=$ACCOUNT_SID CALLFLOW_ROOT_AUTH_TOKEN=$AUTH_TOKEN \
    "$CALLFLOW_BIN" serve --http "127.0.0.1:$CALLFLOW_PORT" --data "$TMP/data" \
    >"$OUT/callflow.log" 2>&1 &
CALLFLOW_PID=$!
wait_http "$CALLFLOW_URL/health" "$CALLFLOW_PID" callflow "$OUT/callflow.log"

log "starting the bare baseline on $BARE_URL"
"$BARE_BIN" "127.0.0.1:$BARE_PORT" >"$OUT/bare.log" 2>&1 &
BARE_PID=$!
wait_http "$BARE_URL/bare.json" "$BARE_PID" bare "$OUT/bare.log"

# ---- fixtures ---------------------------------------------------------------------------------
API="$CALLFLOW_URL/2010-04-01/Accounts/$ACCOUNT_SID"
post() { # url form... -> body on stdout; fails unless 201
    local url=$1 body code
    shift
    local args=()
    for f in "$@"; do args+=(--data-urlencode "$f"); done
    body=$(curl -sS --max-time 10 -u "$ACCOUNT_SID:$AUTH_TOKEN" -w '\n%{http_code}' "${args[@]}" "$url")
    code=${body##*$'\n'}
    body=${body%$'\n'*}
    [ "$code" = 201 ] || die "POST $url answered $code: $body"
    printf '%s' "$body"
}
post "$API/IncomingPhoneNumbers.json" "PhoneNumber=+15005550006" >/dev/null
CALL=$(post "$API/Calls.json" "To=+15558675310" "From=+15005550006" "Url=https://example.com/t")
CALL_SID=$(printf '%s' "$CALL" | grep -o '"sid": *"CA[0-9a-f]\{32\}"' | head -n1 | grep -o 'CA[0-9a-f]\{32\}') \
    || die "no call sid in: $CALL"
code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "$AUTH_HEADER" "$API/Calls/$CALL_SID.json")
[ "$code" = 200 ] || die "GET Calls/$CALL_SID.json answered $code"

# ---- measurement ------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# Total busy and total jiffies of the machine (all CPUs) from /proc/stat.
machine_jiffies() { awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }
# CPU jiffies used by each thread group of a process, by thread name without trailing digits.
thread_jiffies() {
    local f
    for f in /proc/"$1"/task/*/stat; do cat "$f" 2>/dev/null || true; done | awk '{
        s=$0; c=substr(s, index(s,"(")+1); c=substr(c, 1, index(c,")")-1); sub(/[-_ 0-9]+$/, "", c)
        r=substr(s, index(s,")")+2); split(r, f, " "); j[c]+=f[12]+f[13]
    } END { for (c in j) print c, j[c] }' | sort
}
proc_jiffies() { awk '{s=$0; r=substr(s, index(s,")")+2); split(r, f, " "); print f[12]+f[13]}' "/proc/$1/stat"; }

# run NAME PID URL [wrk args...]: warm up, then measure; leaves results in $OUT/NAME.*
run() {
    local name=$1 pid=$2 url=$3
    shift 3
    if [ "$WARMUP" -gt 0 ]; then
        timeout $((WARMUP + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" --timeout 5s "$@" "$url" \
            >"$OUT/$name.warmup.txt" 2>&1 || die "wrk warm-up for $name failed: $(cat "$OUT/$name.warmup.txt")"
    fi
    log "measuring $name for ${DURATION} s: $url"
    local m0 p0 m1 p1
    m0=$(machine_jiffies); p0=$(proc_jiffies "$pid"); thread_jiffies "$pid" >"$OUT/$name.threads0"
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency "$@" "$url" \
        >"$OUT/$name.txt" 2>&1 || die "wrk for $name failed: $(cat "$OUT/$name.txt")"
    m1=$(machine_jiffies); p1=$(proc_jiffies "$pid"); thread_jiffies "$pid" >"$OUT/$name.threads1"
    # CPU over the measurement, in % of one core: the whole machine, and the server process
    read -r b0 t0 <<<"$m0"
    read -r b1 t1 <<<"$m1"
    local ncpu
    ncpu=$(nproc)
    awk -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v p=$((p1 - p0)) -v n="$ncpu" -v hz="$CLK_TCK" -v d="$DURATION" \
        'BEGIN { printf "%.0f %.0f\n", (t > 0 ? 100 * n * b / t : 0), 100 * p / hz / d }' >"$OUT/$name.cpu"
    # the server's CPU split, in % of one core: tokio's worker threads, and the rest of the process
    # (SQLite's worker threads, one per pooled connection). The rest is taken from the process
    # total because connection threads can exit (a request cancelled by wrk at the end of a run
    # closes its connection) and an exited thread's time shows only in the process total.
    local w0 w1
    w0=$(awk '$1 == "tokio-rt-worker" { print $2 }' "$OUT/$name.threads0")
    w1=$(awk '$1 == "tokio-rt-worker" { print $2 }' "$OUT/$name.threads1")
    awk -v w=$(("${w1:-0}" - "${w0:-0}")) -v p=$((p1 - p0)) -v hz="$CLK_TCK" -v d="$DURATION" \
        'BEGIN { printf "tokio workers %.0f%%, SQLite workers and the rest %.0f%%", 100 * w / hz / d, 100 * (p - w) / hz / d }' \
        >"$OUT/$name.threads"
}

rps() { awk '/^Requests\/sec:/ { print $2 }' "$OUT/$1.txt"; }
pct() { awk -v p="$2%" '$1 == p && NF == 2 { print $2 }' "$OUT/$1.txt" | head -n1; }
non2xx() { awk '/Non-2xx or 3xx responses:/ { print $NF }' "$OUT/$1.txt" | head -n1; }
sockerr() { grep -o 'Socket errors:.*' "$OUT/$1.txt" || true; }

run bare "$BARE_PID" "$BARE_URL/bare.json"
run get "$CALLFLOW_PID" "$API/Calls/$CALL_SID.json" -H "$AUTH_HEADER"
run post "$CALLFLOW_PID" "$API/Calls.json" -H "$AUTH_HEADER" -s "$ROOT/bench/post_call.lua"

# ---- report -----------------------------------------------------------------------------------
BARE_RPS=$(rps bare)
GET_RPS=$(rps get)
POST_RPS=$(rps post)
[ -n "$BARE_RPS" ] && [ -n "$GET_RPS" ] && [ -n "$POST_RPS" ] || die "could not read wrk's output in $OUT"

{
    echo "callflow API benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (after a ${WARMUP} s warm-up), loopback; raw output in $OUT"
    echo
    printf '%-28s %10s %9s %9s %6s %7s  %s\n' measurement "req/s" p50 p99 "cpu%" "server%" "errors"
    for n in bare get post; do
        case $n in
            bare) label="bare axum GET" ;;
            get) label="GET Calls/{Sid}.json" ;;
            post) label="POST Calls.json" ;;
        esac
        read -r mcpu scpu <"$OUT/$n.cpu"
        errs=""
        [ -n "$(non2xx "$n")" ] && errs="non-2xx: $(non2xx "$n") "
        errs="$errs$(sockerr "$n")"
        printf '%-28s %10.0f %9s %9s %6s %7s  %s\n' "$label" "$(rps "$n")" "$(pct "$n" 50)" "$(pct "$n" 99)" \
            "$mcpu" "$scpu" "${errs:-none}"
    done
    echo
    echo "(cpu% = whole machine busy, server% = the measured server process; both in % of one core, max $((100 * $(nproc))))"
    for n in get post; do echo "server threads during $n: $(cat "$OUT/$n.threads")"; done
    echo
    awk -v g="$GET_RPS" -v b="$BARE_RPS" -v p="$POST_RPS" 'BEGIN {
        r = g / b
        printf "GET  / bare = %.2fx   (target >= 0.30x: %s)\n", r, (r >= 0.30 ? "met" : "MISSED")
        printf "POST        = %.0f/s  (target >= 1000/s: %s)\n", p, (p >= 1000 ? "met" : "MISSED")
    }'
} | tee "$OUT/summary.txt"

status=0
for n in get post; do
    if [ -n "$(non2xx "$n")" ]; then
        log "warning: $n had $(non2xx "$n") non-2xx responses (see $OUT/$n.txt and $OUT/callflow.log)"
        status=1
    fi
done
exit $status
