#!/usr/bin/env bash
# Callouts benchmark (issue 7): `callflow serve` (release) dials a SIPp far end playing
# tests/sipp/uas_callout.xml (numbers ending 0-5 answered after 500 ms, 6-7 busy, 8-9 never
# answered) through one trunk (cps 1000, max_channels 5000). Three measurements, in one run:
#
#  1. load: the time of one CSV upload of LOAD_ROWS participants (phone_number,name) to a new
#     callout, in rows per second (and the answer's added/merged/invalid_count);
#  2. rate: for each of RATES, a callout with CallsPerSecond=rate and only answered numbers is
#     started; the INVITE rate SIPp sees (its cumulative IncomingCall counter, read from its
#     per-second statistics file and interpolated at the window's ends) over WINDOW s after the
#     first SKIP s, against the configured rate; with callflow's and SIPp's CPU (% of one core,
#     utime+stime from /proc) and the machine's over the same window;
#  3. overhead: callflow's CPU time (utime+stime) per call placed at OVERHEAD_RATE/s, first for
#     SMALL_RUNS callouts of SMALL participants, then for one callout of BIG participants (loaded
#     in uploads of LOAD_ROWS, each timed: more load-rate points) over OVERHEAD_S s, then again
#     for SMALL_RUNS small callouts (the 1,000,000 rows stay in the store); the ratio big/small.
#
#   bench/callouts.sh                          # about 4 minutes on 2 cores
#   RATES="10 100" WINDOW=10 BIG=200000 bench/callouts.sh
#
# Settings (environment): RATES (default "10 100 500"), WINDOW (s measured per rate, default 20),
# SKIP (s skipped after each start, default 2), LOAD_ROWS (default 200000), BIG (default 1000000),
# SMALL (default 1000), SMALL_RUNS (small callouts before and after the big one, default 2),
# OVERHEAD_RATE (default 100), OVERHEAD_S (default 20), MAX_CONCURRENT (each callout's, default
# 2000), OUT (raw output, default target/bench/callouts-<time>), BIN (a callflow binary to
# measure instead of building target/release/callflow, e.g. an older commit's). Needs sipp (Debian sip-tester,
# installed with apt-get when missing), curl, python3 (JSON answers), awk. Every wait is bounded;
# everything started here is stopped on exit. Exits non-zero if a step failed.
set -euo pipefail
export LC_ALL=C

RATES=${RATES:-"10 100 500"}
WINDOW=${WINDOW:-20}
SKIP=${SKIP:-2}
LOAD_ROWS=${LOAD_ROWS:-200000}
BIG=${BIG:-1000000}
SMALL=${SMALL:-1000}
SMALL_RUNS=${SMALL_RUNS:-2}
OVERHEAD_RATE=${OVERHEAD_RATE:-100}
OVERHEAD_S=${OVERHEAD_S:-20}
MAX_CONCURRENT=${MAX_CONCURRENT:-2000}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}
UPLOAD_TIMEOUT_S=${UPLOAD_TIMEOUT_S:-600}
STARTUP_TIMEOUT_S=30
SIPP_LIFETIME_S=${SIPP_LIFETIME_S:-3600}
SETTLE_S=3
NUMBER="+15005550006"
TWIML='<Response><Pause length="1"/></Response>'

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/callouts-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

whole() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a whole number above 0: '$2'"; }
for r in $RATES; do whole RATES "$r"; done
for v in WINDOW SKIP LOAD_ROWS BIG SMALL SMALL_RUNS OVERHEAD_RATE OVERHEAD_S MAX_CONCURRENT; do whole "$v" "${!v}"; done
[ "$LOAD_ROWS" -le 600000 ] || die "LOAD_ROWS must be at most 600000 (numbers are made per upload)"
[ $(((BIG + LOAD_ROWS - 1) / LOAD_ROWS)) -le 80 ] || die "BIG must be at most 80 uploads of LOAD_ROWS"
SMALL_WINDOW=$((SMALL / OVERHEAD_RATE - SKIP - 1))
[ "$SMALL_WINDOW" -ge 2 ] || die "SMALL / OVERHEAD_RATE must be at least SKIP + 3 s"
[ $((OVERHEAD_RATE * (SKIP + OVERHEAD_S + 5))) -le "$BIG" ] || die "BIG is too small to last OVERHEAD_S s"

command -v sipp >/dev/null 2>&1 || install sip-tester
command -v sipp >/dev/null 2>&1 || die "sipp not found after installing sip-tester"
for t in curl python3 awk; do command -v $t >/dev/null 2>&1 || die "$t is needed"; done

# ---- build ------------------------------------------------------------------------------------
build_callflow

# ---- processes --------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callflow-calloutbench.XXXXXX")
CALLFLOW_PID=""
SIPP_PID=""
cleanup() {
    stop_pids $CALLFLOW_PID $SIPP_PID
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for v in $(compgen -e | grep '^CALLFLOW_' || true); do unset "$v"; done

SIP_PORT=$(free_port)
mkdir -p "$OUT/sipp"
STAT=$OUT/sipp/stat.csv
log "starting SIPp (uas_callout) on udp 127.0.0.1:$SIP_PORT"
(cd "$OUT/sipp" && exec sipp -sf "$ROOT/tests/sipp/uas_callout.xml" -i 127.0.0.1 -p "$SIP_PORT" \
    -mp "$(free_port)" -ci 127.0.0.1 -m 100000000 -l 5000 -timeout "${SIPP_LIFETIME_S}s" -nostdin \
    -trace_stat -stf "$STAT" -fd 1 -trace_err -error_file errors.log >stdout.log 2>stderr.log) &
SIPP_PID=$!

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
ACCOUNT_SID="AC$(hex 16)"
AUTH_TOKEN=$(hex 16)
HTTP_PORT=$(free_port)
CALLFLOW_SIP_PORT=$(free_port)
cat >"$OUT/callflow.toml" <<EOF
[[trunks]]
name = "telco"
host = "127.0.0.1"
port = $SIP_PORT
transport = "udp"
inbound_sources = ["127.0.0.1/32"]
cps = 1000.0
max_channels = 5000
EOF
log "starting callflow: http 127.0.0.1:$HTTP_PORT, sip udp 127.0.0.1:$CALLFLOW_SIP_PORT (data in $TMP/data)"
RUST_LOG=warn CALLFLOW_WEBHOOK_ALLOW_PRIVATE=true \
    CALLFLOW_ROOT_ACCOUNT_SID=$ACCOUNT_SID CALLFLOW_ROOT_AUTH_TOKEN=$AUTH_TOKEN \
    "$CALLFLOW_BIN" serve --http "127.0.0.1:$HTTP_PORT" --sip "127.0.0.1:$CALLFLOW_SIP_PORT" \
    --data "$TMP/data" --config "$OUT/callflow.toml" >"$OUT/callflow.log" 2>&1 &
CALLFLOW_PID=$!
BASE="http://127.0.0.1:$HTTP_PORT"
wait_http "$BASE/health" "$CALLFLOW_PID" callflow "$OUT/callflow.log"
# SIPp writes its first statistics row at once
for _ in $(seq 50); do [ -s "$STAT" ] && break; sleep 0.1; done
kill -0 "$SIPP_PID" 2>/dev/null || { tail -n 20 "$OUT/sipp/stderr.log" >&2; die "SIPp exited at start"; }

# api EXPECTED_CODES PATH TIMEOUT [curl args]: the answer's body, or die
api() {
    local codes=$1 path=$2 secs=$3 body code
    shift 3
    body=$(curl -sS --max-time "$secs" -u "$ACCOUNT_SID:$AUTH_TOKEN" -w '\n%{http_code}' "$@" "$BASE$path") \
        || die "$path: curl failed"
    code=${body##*$'\n'}
    body=${body%$'\n'*}
    case " $codes " in *" $code "*) ;; *) die "$path answered $code: ${body:0:500}" ;; esac
    printf '%s' "$body"
}
jget() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
V1="/v1/Accounts/$ACCOUNT_SID"

api 201 "/2010-04-01/Accounts/$ACCOUNT_SID/IncomingPhoneNumbers.json" 10 \
    --data-urlencode "PhoneNumber=$NUMBER" --data-urlencode "VoiceUrl=http://127.0.0.1:9/" >/dev/null

create_callout() { # NAME RATE -> the callout's sid
    api 201 "$V1/Callouts.json" 10 --data-urlencode "Name=$1" --data-urlencode "From=$NUMBER" \
        --data-urlencode "Twiml=$TWIML" --data-urlencode "CallsPerSecond=$2" \
        --data-urlencode "MaxConcurrent=$MAX_CONCURRENT" \
        --data-urlencode 'RetryConfig={"max_attempts":1}' | jget sid
}
set_status() { # SID STATUS
    api 200 "$V1/Callouts/$1.json" 30 --data-urlencode "Status=$2" >"$OUT/status-$1-$2.json"
}

# answered_csv FILE PREFIX ROWS: ROWS distinct numbers +2547PPnnnnnd, last digit d in 0-5
answered_csv() {
    awk -v p="$2" -v n="$3" 'BEGIN { print "phone_number,name"
        for (i = 0; i < n; i++) printf "+2547%02d%05d%d,Person %d\n", p, int(i / 6), i % 6, i }' >"$1"
}
# any_csv FILE ROWS: ROWS distinct numbers +2547nnnnnnnn (every last digit)
any_csv() {
    awk -v n="$2" 'BEGIN { print "phone_number,name"
        for (i = 0; i < n; i++) printf "+2547%08d,Person %d\n", i * 7 + 1000000, i }' >"$1"
}

LOADS=$OUT/loads.txt # callout rows bytes ms added merged invalid_count
: >"$LOADS"
upload() { # SID FILE LABEL
    local rows bytes w0 w1 body
    rows=$(($(wc -l <"$2") - 1))
    bytes=$(wc -c <"$2")
    w0=$(date +%s%N)
    body=$(api "200 201" "$V1/Callouts/$1/Participants.json" "$UPLOAD_TIMEOUT_S" -X POST \
        --data-binary @"$2" -H 'Content-Type: text/csv')
    w1=$(date +%s%N)
    printf '%s' "$body" >"$OUT/upload-$3.json"
    echo "$3 $rows $bytes $(((w1 - w0) / 1000000)) $(printf '%s' "$body" |
        python3 -c 'import json, sys; a = json.load(sys.stdin); print(a["added"], a["merged"], a["invalid_count"])')" >>"$LOADS"
    log "upload $3: $(tail -n1 "$LOADS")"
}

CLK_TCK=$(getconf CLK_TCK)
ticks() { # pid -> utime + stime (clock ticks)
    awk '{ r = substr($0, index($0, ")") + 2); split(r, f, " "); print f[12] + f[13] }' "/proc/$1/stat" 2>/dev/null || echo 0
}
machine() { # -> "busy total" jiffies of all CPUs
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
now() { date +%s.%N; }
# ic_at T: SIPp's IncomingCall(C) at epoch T, interpolated between its statistics rows
ic_at() {
    awk -F';' -v t="$1" 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "CurrentTime") ct = i; if ($i == "IncomingCall(C)") ic = i }; next }
        { split($ct, p, "\t"); e = p[3] + 0; v = $ic + 0
          if (e <= t) { e0 = e; v0 = v; have0 = 1 } else if (!have1) { e1 = e; v1 = v; have1 = 1 } }
        END { if (!have0 || !have1) { print "?"; exit }
              printf "%.3f\n", v0 + (v1 - v0) * (t - e0) / (e1 - e0) }' "$STAT"
}
sipp_field() { # column -> its value in SIPp's last statistics row
    awk -F';' -v col="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next } { v = $c } END { print v }' "$STAT"
}

# thread_ticks PID FILE: "tid ticks name" of each of the process's threads
thread_ticks() {
    local f
    for f in /proc/"$1"/task/*/stat; do cat "$f" 2>/dev/null || true; done |
        awk '{ l = index($0, "("); r = index($0, ")"); name = substr($0, l + 1, r - l - 1); gsub(/ /, "_", name)
               split(substr($0, r + 2), f, " "); print $1, f[12] + f[13], name }' >"$2"
}
# hot_threads BEFORE AFTER SECONDS: the three busiest threads over the window, "name=% of a core"
hot_threads() {
    awk -v s="$3" -v hz="$CLK_TCK" 'NR == FNR { t0[$1] = $2; next } { d = $2 - ($1 in t0 ? t0[$1] : 0); if (d > 0) print d, $3 }' "$1" "$2" |
        sort -rn | head -n 3 | awk -v s="$3" -v hz="$CLK_TCK" '{ printf "%s%s=%.0f%%", (NR > 1 ? "," : ""), $2, 100 * $1 / hz / s } END { if (NR == 0) printf "-" }'
}

# run_window SID SKIP_S WINDOW_S LABEL [MID_S]: start the callout, measure from SKIP_S to
# SKIP_S+WINDOW_S after the start, stop it; appends "label t_a t_b ic_a ic_b cf_ticks sipp_ticks
# busy total hot_threads" to $RUNS (with MID_S, also "label-first" for the first MID_S s)
RUNS=$OUT/runs.txt
: >"$RUNS"
: >"$OUT/outcomes.txt"
: >"$OUT/stops.txt"
sleep_until() { sleep "$(awk -v a="$1" -v b="$(now)" 'BEGIN { d = a - b; print (d > 0 ? d : 0) }')"; }
row() { # label ta tb cfa cfb spa spb "ma" "mb" threads_a threads_b
    local ica icb
    ica=$(ic_at "$2"); icb=$(ic_at "$3")
    [ "$ica" != "?" ] && [ "$icb" != "?" ] || die "$1: no SIPp statistics around the window ($STAT)"
    set -- "$@" $8 $9
    echo "$1 $2 $3 $ica $icb $(($5 - $4)) $(($7 - $6)) $((${14} - ${12})) $((${15} - ${13})) $(hot_threads "${10}" "${11}" "$(awk -v a="$2" -v b="$3" 'BEGIN { print b - a }')")" >>"$RUNS"
    log "run $1: $(tail -n1 "$RUNS")"
}
run_window() {
    local sid=$1 skip=$2 win=$3 label=$4 mid=${5:-} t0 ta tb tm cfa cfb cfm spa spb spm ma mb mm
    t0=$(now)
    set_status "$sid" running
    sleep_until "$(awk -v a="$t0" -v s="$skip" 'BEGIN { printf "%.6f", a + s }')"
    ta=$(now); cfa=$(ticks "$CALLFLOW_PID"); spa=$(ticks "$SIPP_PID"); ma=$(machine); thread_ticks "$CALLFLOW_PID" "$TMP/threads-a"
    if [ -n "$mid" ]; then
        sleep_until "$(awk -v a="$ta" -v s="$mid" 'BEGIN { printf "%.6f", a + s }')"
        tm=$(now); cfm=$(ticks "$CALLFLOW_PID"); spm=$(ticks "$SIPP_PID"); mm=$(machine); thread_ticks "$CALLFLOW_PID" "$TMP/threads-m"
    fi
    sleep_until "$(awk -v a="$ta" -v s="$win" 'BEGIN { printf "%.6f", a + s }')"
    tb=$(now); cfb=$(ticks "$CALLFLOW_PID"); spb=$(ticks "$SIPP_PID"); mb=$(machine); thread_ticks "$CALLFLOW_PID" "$TMP/threads-b"
    echo "$tb" >>"$OUT/stops.txt"
    set_status "$sid" stopped
    sleep 2.2 # SIPp's next statistics rows, past tb
    if [ -n "$mid" ]; then
        row "$label-first" "$ta" "$tm" "$cfa" "$cfm" "$spa" "$spm" "$ma" "$mm" "$TMP/threads-a" "$TMP/threads-m"
    fi
    row "$label" "$ta" "$tb" "$cfa" "$cfb" "$spa" "$spb" "$ma" "$mb" "$TMP/threads-a" "$TMP/threads-b"
    api 200 "$V1/Callouts/$sid.json" 10 >"$OUT/callout-$label.json"
    python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]
print(sys.argv[2], s["total"], s["attempts"], s["completed"], s["in_progress"], s["canceled"], s["failed"] + s["errored"] + s["busy"] + s["no_answer"])' \
        "$OUT/callout-$label.json" "$label" >>"$OUT/outcomes.txt"
    kill -0 "$CALLFLOW_PID" 2>/dev/null || die "callflow exited (see $OUT/callflow.log)"
    kill -0 "$SIPP_PID" 2>/dev/null || die "SIPp exited (see $OUT/sipp)"
    sleep "$SETTLE_S"
}

# ---- 1. load ----------------------------------------------------------------------------------
log "1. load: $LOAD_ROWS rows in one CSV"
any_csv "$TMP/load.csv" "$LOAD_ROWS"
LOAD_SID=$(create_callout load 10)
upload "$LOAD_SID" "$TMP/load.csv" load

# ---- 2. rate ----------------------------------------------------------------------------------
for rate in $RATES; do
    log "2. rate: $rate/s for $((SKIP + WINDOW)) s"
    answered_csv "$TMP/rate.csv" 20 $((rate * (SKIP + WINDOW + 4)))
    sid=$(create_callout "rate $rate" "$rate")
    upload "$sid" "$TMP/rate.csv" "rate-$rate"
    run_window "$sid" "$SKIP" "$WINDOW" "rate-$rate"
done

# ---- 3. overhead ------------------------------------------------------------------------------
answered_csv "$TMP/small.csv" 30 "$SMALL"
small_runs() { # PHASE
    local k sid
    for k in $(seq "$SMALL_RUNS"); do
        log "3. overhead: $SMALL participants at $OVERHEAD_RATE/s ($1, run $k)"
        sid=$(create_callout "small $1 $k" "$OVERHEAD_RATE")
        upload "$sid" "$TMP/small.csv" "small-$1-$k"
        run_window "$sid" "$SKIP" "$SMALL_WINDOW" "small-$1-$k"
    done
}
small_runs before
log "3. overhead: loading $BIG participants in uploads of $LOAD_ROWS"
BIG_SID=$(create_callout big "$OVERHEAD_RATE")
left=$BIG
k=0
while [ "$left" -gt 0 ]; do
    n=$((left < LOAD_ROWS ? left : LOAD_ROWS))
    answered_csv "$TMP/big.csv" $((40 + k)) "$n"
    upload "$BIG_SID" "$TMP/big.csv" "big-$k"
    left=$((left - n))
    k=$((k + 1))
done
api 200 "$V1/Callouts/$BIG_SID.json" 30 >"$OUT/callout-big-loaded.json"
log "3. overhead: $BIG participants at $OVERHEAD_RATE/s"
run_window "$BIG_SID" "$SKIP" "$OVERHEAD_S" big "$SMALL_WINDOW"
small_runs after
RSS_KIB=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$CALLFLOW_PID/status")
HWM_KIB=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$CALLFLOW_PID/status")
SIPP_FAILED=$(sipp_field 'FailedCall(C)')
SIPP_OK=$(sipp_field 'SuccessfulCall(C)')
SIPP_IN=$(sipp_field 'IncomingCall(C)')

# ---- report -----------------------------------------------------------------------------------
{
    echo "callflow callouts benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), ${BIN:-commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')}, $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "SIPp $(sipp -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -n1 || true) uas_callout.xml; trunk cps 1000, max_channels 5000; MaxConcurrent $MAX_CONCURRENT; raw output in $OUT"
    echo
    echo "Participant uploads (CSV, one POST each):"
    echo
    echo "| upload | rows | MiB | s | rows/s | added | merged | invalid |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    awk '{ printf "| %s | %d | %.1f | %.2f | %.0f | %s | %s | %s |\n", $1, $2, $3 / 1048576, $4 / 1000, ($4 > 0 ? $2 * 1000 / $4 : 0), $5, $6, $7 }' "$LOADS"
    echo
    echo "Measured vs configured rate (INVITEs at SIPp from ${SKIP} s to $((SKIP + WINDOW)) s after the start):"
    echo
    echo "| configured/s | INVITEs | s | measured/s | measured/configured | callflow CPU | SIPp CPU | machine busy | callflow's busiest threads |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -v hz="$CLK_TCK" -v n="$(nproc)" '$1 ~ /^rate-/ { r = substr($1, 6); s = $3 - $2; c = $5 - $4
        printf "| %d | %.0f | %.2f | %.2f | %.4f | %.0f%% | %.0f%% | %.0f%% of %d cores | %s |\n", r, c, s, c / s, c / s / r,
            100 * $6 / hz / s, 100 * $7 / hz / s, ($9 > 0 ? 100 * $8 / $9 : 0), n, $10 }' "$RUNS"
    echo
    echo "Dispatcher overhead at $OVERHEAD_RATE/s: callflow's CPU (utime+stime) per call placed (small: $SMALL participants, windows of ${SMALL_WINDOW} s; big: $BIG, ${OVERHEAD_S} s, and big-first: its first ${SMALL_WINDOW} s):"
    echo
    echo "| run | participants | INVITEs | s | measured/s | callflow CPU s | µs CPU per call | callflow's busiest threads |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    awk -v hz="$CLK_TCK" -v small="$SMALL" -v big="$BIG" '$1 ~ /^(small|big)/ { s = $3 - $2; c = $5 - $4
        printf "| %s | %d | %.0f | %.2f | %.2f | %.2f | %.0f | %s |\n", $1, ($1 ~ /^big/ ? big : small), c, s, c / s, $6 / hz, (c > 0 ? $6 / hz * 1e6 / c : 0), $10 }' "$RUNS"
    echo
    awk -v hz="$CLK_TCK" '$1 ~ /^small-before/ { sb += $6; cb += $5 - $4 } $1 ~ /^small-after/ { sa += $6; ca += $5 - $4 }
        $1 == "big" { bt = $6; bc = $5 - $4 } $1 == "big-first" { ft = $6; fc = $5 - $4 }
        END { ub = sb / hz * 1e6 / cb; ua = sa / hz * 1e6 / ca; ug = bt / hz * 1e6 / bc; uf = ft / hz * 1e6 / fc; us = (sb + sa) / hz * 1e6 / (cb + ca)
              printf "µs per call: small before %.0f, small after %.0f, pooled %.0f; big %.0f (its first window %.0f)\n", ub, ua, us, ug, uf
              printf "big / small pooled = %.2f; big-first / small pooled = %.2f\n", ug / us, uf / us }' "$RUNS"
    echo
    echo "Each callout after its stop (its summary): label total attempts completed in_progress canceled other (failed, errored, busy, no-answer):"
    echo
    sed 's/^/    /' "$OUT/outcomes.txt"
    echo
    echo "callflow at the end: RSS $((RSS_KIB / 1024)) MiB, peak $((HWM_KIB / 1024)) MiB; SIPp: $SIPP_IN calls in, $SIPP_OK successful, $SIPP_FAILED failed"
    echo "(CPU in % of one core over the window, from /proc/PID/stat at ${CLK_TCK} ticks/s; machine busy from /proc/stat)"
} | tee "$OUT/summary.txt"

# Stopping a callout CANCELs its attempts whose INVITE got no final answer yet (and ends with a BYE
# one whose 200 crossed the CANCEL, whose ACK SIPp then takes for a new call); uas_callout expects
# none of these for an answered number, so SIPp counts each as a failed call. Its "Aborting call"
# events within 3 s after a stop was asked for are counted apart.
sed 's/\(20[0-9][0-9]-[0-9][0-9]-[0-9][0-9]\t\)/\n\1/g' "$OUT/sipp/errors.log" 2>/dev/null |
    awk -F'\t' 'NF >= 3 && $3 ~ /Aborting call/ { split($3, p, ":"); print p[1] }' >"$OUT/sipp/failure-times.txt" || true
AT_STOP=$(awk 'NR == FNR { stop[NR] = $1; n = NR; next }
    { for (i = 1; i <= n; i++) if ($1 >= stop[i] && $1 < stop[i] + 3) { c++; break } } END { print c + 0 }' \
    "$OUT/stops.txt" "$OUT/sipp/failure-times.txt")
echo "(SIPp failed calls within 3 s after a callout's stop, CANCEL or BYE of an attempt in flight: $AT_STOP of $SIPP_FAILED)" | tee -a "$OUT/summary.txt"
status=0
if [ "${SIPP_FAILED:-0}" -gt "$AT_STOP" ]; then
    log "warning: SIPp counted $SIPP_FAILED failed calls, $AT_STOP of them at a stop (see $OUT/sipp/errors.log)"
    status=1
fi
exit $status
