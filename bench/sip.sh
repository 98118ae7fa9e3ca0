#!/usr/bin/env bash
# SIP benchmark: SIPp (tests/sipp/uac_load.xml: INVITE, 200, ACK, BYE, 200) drives, at the same
# fixed call rates in the same run, first a stateful Kamailio responder (bench/kamailio.cfg: tm,
# t_reply 180 then 200 with SDP) and then `callflow serve` answering an inbound call to a number
# whose TwiML holds the call until SIPp hangs up. For each (target, rate) it reports successful
# calls per second, SIPp's retransmissions, p99 INVITE->200, the target's CPU time per call (utime +
# stime from /proc/PID/stat before and after, all of Kamailio's processes), its peak RSS (VmHWM),
# and then callflow's CPU per call as a ratio of Kamailio's. Loopback only; every step is bounded
# in time; everything started here is stopped on exit.
#
#   bench/sip.sh                       # rates 100 200 400, 20 s of calls each
#   RATES="200 400 600" DURATION=10 bench/sip.sh
#   TARGETS=kamailio bench/sip.sh      # the reference alone (no build of callflow)
#
# Settings (environment): RATES (calls/s, default "100 200 400"), DURATION (s of calls per rate,
# default 20; calls = rate x DURATION, at most MAX_CALLS, default 20000), HOLD_MS (pause between
# ACK and BYE, default 0), TARGETS (default "kamailio callflow"), KAMAILIO_CHILDREN (UDP worker
# processes, default 2), VOICE_URL (the number's VoiceUrl; default: a small local TwiML server
# answering <Pause length="60"/>), OUT (folder for raw output, default target/bench/sip-<time>),
# BIN (a callflow binary to measure instead of building target/release/callflow), BASELINE_BIN
# (another callflow binary, e.g. an older commit's, measured in the same run as target
# "baseline", right after callflow at each rate), DATABASE_URL (the database of target callflow,
# e.g. postgres://user@127.0.0.1:5432/empty_db; default: SQLite in its data folder).
# Needs sipp (Debian sip-tester) and kamailio, installed with apt-get when missing; curl; python3
# for the default TwiML server. Exits non-zero if a target did not answer or any call failed.
set -euo pipefail
export LC_ALL=C

DATABASE_URL=${DATABASE_URL:-}
RATES=${RATES:-"100 200 400"}
DURATION=${DURATION:-20}
MAX_CALLS=${MAX_CALLS:-20000}
HOLD_MS=${HOLD_MS:-0}
TARGETS=${TARGETS:-"kamailio callflow"}
KAMAILIO_CHILDREN=${KAMAILIO_CHILDREN:-2}
VOICE_URL=${VOICE_URL:-}
BASELINE_BIN=${BASELINE_BIN:-}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}
STARTUP_TIMEOUT_S=30
SETTLE_S=2
NUMBER="+15005550006"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/sip-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
SCENARIO=$ROOT/tests/sipp/uac_load.xml

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

for r in $RATES; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES must be whole calls per second: '$r'"; done
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $HOLD_MS =~ ^[0-9]+$ ]] || die "HOLD_MS must be a whole number of milliseconds"
for t in $TARGETS; do [ "$t" = kamailio ] || [ "$t" = callflow ] || die "unknown target '$t'"; done
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    want callflow || die "BASELINE_BIN needs the callflow target"
    TARGETS="$TARGETS baseline"
fi

# ---- tools ------------------------------------------------------------------------------------
command -v sipp >/dev/null 2>&1 || install sip-tester
command -v sipp >/dev/null 2>&1 || die "sipp not found after installing sip-tester"
KAMAILIO=""
if want kamailio; then
    KAMAILIO=$(PATH="$PATH:/usr/sbin:/sbin" command -v kamailio || true)
    if [ -z "$KAMAILIO" ]; then
        install kamailio
        KAMAILIO=$(PATH="$PATH:/usr/sbin:/sbin" command -v kamailio || true)
        [ -n "$KAMAILIO" ] || die "kamailio not found after installing it"
    fi
fi
if want callflow; then
    command -v curl >/dev/null 2>&1 || die "curl is needed"
    [ -n "$VOICE_URL" ] || command -v python3 >/dev/null 2>&1 || die "python3 is needed (or set VOICE_URL)"
fi

# ---- build ------------------------------------------------------------------------------------
if want callflow; then build_callflow; fi

# ---- processes --------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callflow-sipbench.XXXXXX")
KAMAILIO_PID=""
CALLFLOW_PID=""
BASELINE_PID=""
TWIML_PID=""
cleanup() {
    stop_pids $KAMAILIO_PID $CALLFLOW_PID $BASELINE_PID $TWIML_PID
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# sipp_once NAME TARGET_PORT SECONDS [sipp args...]: one call of uac_load; 0 if it succeeded.
sipp_once() {
    local name=$1 port=$2 secs=$3 dir="$OUT/$1"
    shift 3
    mkdir -p "$dir"
    (cd "$dir" && timeout $((secs + 15)) sipp "127.0.0.1:$port" -sf "$SCENARIO" -s "$NUMBER" -m 1 \
        -i 127.0.0.1 -p "$(free_port)" -mp "$(free_port)" -ci 127.0.0.1 -timeout "${secs}s" \
        -timeout_error -nostdin -trace_err -error_file errors.log -trace_msg -message_file messages.log \
        "$@" >stdout.log 2>stderr.log)
}

# wait_sip NAME PORT PID LOG: until one call through PORT succeeds (bounded), or die.
wait_sip() {
    local deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$3" 2>/dev/null || { tail -n 40 "$4" >&2; die "$1 exited during startup"; }
        if sipp_once "probe-$1" "$2" 2; then return 0; fi
        sleep 0.5
    done
    tail -n 20 "$OUT/probe-$1/errors.log" >&2 || true
    tail -n 40 "$4" >&2
    die "$1 did not answer a call on udp 127.0.0.1:$2 within ${STARTUP_TIMEOUT_S} s"
}


# Settings come only from the flags and variables below, not from the caller's CALLFLOW_*.
for v in $(compgen -e | grep '^CALLFLOW_' || true); do unset "$v"; done

KAMAILIO_PORT=""
if want kamailio; then
    KAMAILIO_PORT=$(free_port)
    mkdir -p "$TMP/kamailio"
    log "starting kamailio on udp 127.0.0.1:$KAMAILIO_PORT ($KAMAILIO_CHILDREN children)"
    "$KAMAILIO" -f "$ROOT/bench/kamailio.cfg" -l "udp:127.0.0.1:$KAMAILIO_PORT" -DD -E \
        -n "$KAMAILIO_CHILDREN" -m 64 -M 8 -P "$TMP/kamailio/kamailio.pid" -Y "$TMP/kamailio" \
        >"$OUT/kamailio.log" 2>&1 &
    KAMAILIO_PID=$!
    wait_sip kamailio "$KAMAILIO_PORT" "$KAMAILIO_PID" "$OUT/kamailio.log"
fi

CALLFLOW_PORT=""
CALLFLOW_OK=1
if want callflow; then
    hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
    ACCOUNT_SID="AC$(hex 16)"
    AUTH_TOKEN=$(hex 16)
    HTTP_PORT=$(free_port)
    CALLFLOW_PORT=$(free_port)
    if [ -z "$VOICE_URL" ]; then
        TWIML_PORT=$(free_port)
        python3 "$ROOT/bench/twiml_app.py" "$TWIML_PORT" \
            --document '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="60"/></Response>' \
            >"$OUT/twiml.log" 2>&1 &
        TWIML_PID=$!
        VOICE_URL="http://127.0.0.1:$TWIML_PORT/voice"
        wait_http "$VOICE_URL" "$TWIML_PID" "TwiML server" "$OUT/twiml.log"
    fi
    # One trunk: inbound calls from 127.0.0.1; its gateway address is never called here.
    cat >"$TMP/callflow.toml" <<EOF
[[trunks]]
name = "bench"
host = "127.0.0.1"
port = $(free_port)
transport = "udp"
inbound_sources = ["127.0.0.1/32"]
cps = 1000.0
max_channels = 0
EOF
    cp "$TMP/callflow.toml" "$OUT/callflow.toml"
    start_callflow "$CALLFLOW_PORT" "$TMP/callflow.toml" CALLFLOW_WEBHOOK_ALLOW_PRIVATE=true \
        ${DATABASE_URL:+CALLFLOW_DATABASE_URL=$DATABASE_URL}
    create_number "$NUMBER" "$VOICE_URL"
    # A clear verdict when callflow does not take calls: the Kamailio half is still measured.
    deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    until sipp_once probe-callflow "$CALLFLOW_PORT" 3; do
        # retry only while nothing answers (startup); a wrong answer will not change
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$CALLFLOW_PID" 2>/dev/null ||
            grep -q 'unexpected message' "$OUT/probe-callflow/errors.log" 2>/dev/null; then
            CALLFLOW_OK=0
            log "error: callflow did not answer a call to $NUMBER on udp 127.0.0.1:$CALLFLOW_PORT" \
                "(SIPp's errors: $OUT/probe-callflow/errors.log; callflow's log: $OUT/callflow.log):"
            tail -n 15 "$OUT/probe-callflow/errors.log" >&2 2>/dev/null || true
            tail -n 20 "$OUT/callflow.log" >&2 || true
            log "measuring the other targets only"
            break
        fi
        sleep 0.5
    done
fi

BASELINE_PORT=""
if want baseline && [ "$CALLFLOW_OK" = 1 ]; then
    # a second callflow, the baseline binary, with its own ports, data and log
    current=($CALLFLOW_BIN $CALLFLOW_PID $HTTP_PORT)
    CALLFLOW_BIN=$BASELINE_BIN
    HTTP_PORT=$(free_port)
    BASELINE_PORT=$(free_port)
    # its own RTP ports: a callflow keeps freed ports' sockets bound for its next calls
    { cat "$TMP/callflow.toml"; printf '\n[sip]\nrtp_port_min = 30000\nrtp_port_max = 39998\n'; } >"$TMP/baseline.toml"
    BENCH_NAME=baseline start_callflow "$BASELINE_PORT" "$TMP/baseline.toml" CALLFLOW_WEBHOOK_ALLOW_PRIVATE=true
    BASELINE_PID=$CALLFLOW_PID
    create_number "$NUMBER" "$VOICE_URL"
    CALLFLOW_BIN=${current[0]} CALLFLOW_PID=${current[1]} HTTP_PORT=${current[2]}
    deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    until sipp_once probe-baseline "$BASELINE_PORT" 3; do
        [ $SECONDS -lt $deadline ] && kill -0 "$BASELINE_PID" 2>/dev/null \
            || die "the baseline did not answer a call (see $OUT/probe-baseline/ and $OUT/baseline.log)"
        sleep 0.5
    done
fi

# ---- measurement ------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
target_pids() { # target -> the pids whose CPU counts (Kamailio: the main process and its children)
    case $1 in
        kamailio) echo "$KAMAILIO_PID" $(pgrep -P "$KAMAILIO_PID" || true) ;;
        callflow) echo "$CALLFLOW_PID" ;;
        baseline) echo "$BASELINE_PID" ;;
    esac
}
ticks() { # pids... -> utime + stime, in clock ticks, summed
    local pid
    for pid in "$@"; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        awk '{ r = substr($0, index($0, ")") + 2); split(r, f, " "); t += f[12] + f[13] } END { print t + 0 }'
}
hwm_kib() { # pids... -> VmHWM summed, KiB
    local pid
    for pid in "$@"; do cat "/proc/$pid/status" 2>/dev/null || true; done |
        awk '$1 == "VmHWM:" { t += $2 } END { print t + 0 }'
}
udp_rcvbuf_errors() { awk '$1 == "Udp:" && $2 ~ /^[0-9]/ { print $7 }' /proc/net/snmp; }
csv_field() { # file column -> the column's value in the last row of a SIPp statistics CSV
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { v = $c } END { print (c && v != "" ? v : "?") }' "$1"
}

ROWS=$OUT/rows.txt
: >"$ROWS"
status=0
# measure TARGET PORT RATE: one SIPp run, one row in $ROWS
measure() {
    local target=$1 port=$2 rate=$3
    local calls=$((rate * DURATION))
    [ "$calls" -le "$MAX_CALLS" ] || calls=$MAX_CALLS
    local limit=$((rate * (HOLD_MS / 1000 + 1) * 4 + 100))
    local secs=$((calls / rate * 2 + 30))
    local dir="$OUT/$target-$rate"
    mkdir -p "$dir"
    log "$target: $calls calls at $rate/s (SIPp timeout ${secs} s)"
    local pids t0 t1 u0 u1 w0 w1 rc=0
    pids=$(target_pids "$target")
    t0=$(ticks $pids)
    u0=$(udp_rcvbuf_errors)
    w0=$(date +%s%N)
    (
        cd "$dir"
        TIMEFORMAT='%U %S'
        {
            time timeout $((secs + 30)) sipp "127.0.0.1:$port" -sf "$SCENARIO" -s "$NUMBER" \
                -r "$rate" -m "$calls" -l "$limit" -d "$HOLD_MS" -i 127.0.0.1 -p "$(free_port)" \
                -mp "$(free_port)" -ci 127.0.0.1 -timeout "${secs}s" -timeout_error -nostdin \
                -trace_stat -stf stat.csv -fd 5 -trace_rtt -rtt_freq 1 -trace_err -error_file errors.log \
                -trace_screen -screen_file screen.log >stdout.log 2>stderr.log
        } 2>sipp-cpu.txt
    ) || rc=$?
    w1=$(date +%s%N)
    t1=$(ticks $pids)
    u1=$(udp_rcvbuf_errors)
    local ok failed retrans p99 hwm sipp_cpu
    ok=$(csv_field "$dir/stat.csv" 'SuccessfulCall(C)' 2>/dev/null || echo '?')
    failed=$(csv_field "$dir/stat.csv" 'FailedCall(C)' 2>/dev/null || echo '?')
    retrans=$(csv_field "$dir/stat.csv" 'Retransmissions(C)' 2>/dev/null || echo '?')
    # every call's INVITE->200 (ms, SIPp's resolution) from the rtt trace; p99 = nearest rank
    p99=$( (cat "$dir"/*_rtt.csv 2>/dev/null || true) | awk -F';' '$3 == "invite" { print $2 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "?"; exit } i = int(NR * 0.99); if (i < NR * 0.99) i++; print v[i] }')
    hwm=$(hwm_kib $pids)
    sipp_cpu=$(awk '{ print $1 + $2 }' "$dir/sipp-cpu.txt" 2>/dev/null | tail -n1 || true)
    echo "$target $rate $calls $ok $failed $retrans $p99 $((t1 - t0)) $(((w1 - w0) / 1000000)) $hwm ${sipp_cpu:-?} $((u1 - u0)) $rc" >>"$ROWS"
    if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then
        log "warning: $target at $rate/s: SIPp exited $rc, $failed failed calls (see $dir)"
        status=1
    fi
    sleep "$SETTLE_S"
}

for rate in $RATES; do
    if want kamailio; then measure kamailio "$KAMAILIO_PORT" "$rate"; fi
    if want callflow && [ "$CALLFLOW_OK" = 1 ]; then measure callflow "$CALLFLOW_PORT" "$rate"; fi
    if want baseline && [ "$CALLFLOW_OK" = 1 ]; then measure baseline "$BASELINE_PORT" "$rate"; fi
done

# ---- report -----------------------------------------------------------------------------------
{
    echo "callflow SIP benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
    kamailio_version=""
    if [ -n "$KAMAILIO" ]; then
        kamailio_version="$("$KAMAILIO" -v 2>/dev/null | head -n1 | sed 's/^version: //; s/ *$//' || true); "
    fi
    echo "SIPp $(sipp -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -n1 || true) uac_load.xml, hold ${HOLD_MS} ms," \
        "${DURATION} s of calls per rate (at most $MAX_CALLS); ${kamailio_version}raw output in $OUT"
    echo
    echo "| target | rate/s | calls | ok | failed | ok calls/s | retrans | p99 INVITE→200 | CPU per call | target CPU | peak RSS | SIPp CPU | UDP rcvbuf drops |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -v hz="$CLK_TCK" '{
        target = $1; rate = $2; calls = $3; ok = $4; failed = $5; retrans = $6; p99 = $7
        ticks = $8; ms = $9; hwm = $10; sipp = $11; drops = $12
        cps = (ms > 0 && ok ~ /^[0-9]+$/) ? sprintf("%.1f", ok * 1000 / ms) : "?"
        per = (ok ~ /^[0-9]+$/ && ok > 0) ? sprintf("%.0f µs", ticks / hz * 1e6 / ok) : "n/a"
        load = (ms > 0) ? sprintf("%.0f%%", 100 * ticks / hz / (ms / 1000)) : "?"
        scpu = (ms > 0 && sipp ~ /^[0-9.]+$/) ? sprintf("%.0f%%", 100 * sipp / (ms / 1000)) : "?"
        rtt = (p99 == "?") ? "?" : (p99 == 0 ? "<1 ms" : p99 " ms")
        printf "| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %.1f MiB | %s | %s |\n",
            target, rate, calls, ok, failed, cps, retrans, rtt, per, load, hwm / 1024, scpu, drops
    }' "$ROWS"
    echo
    echo "(CPU per call: the target's utime+stime over the run / successful calls, at ${CLK_TCK} ticks/s;"
    echo " target CPU and SIPp CPU in % of one core over the run's wall time; peak RSS: VmHWM, for Kamailio"
    echo " summed over its processes (shared memory counted in each); p99 at SIPp's 1 ms resolution)"
    if [ -n "$TWIML_PID" ] && [ "$CALLFLOW_OK" = 1 ]; then
        echo "(the number's VoiceUrl was a local Python TwiML server, whose CPU is not in callflow's figures)"
    fi
    if want kamailio && want callflow && [ "$CALLFLOW_OK" = 1 ]; then
        echo
        awk -v hz="$CLK_TCK" '$4 ~ /^[0-9]+$/ && $4 > 0 { per[$1 " " $2] = $8 / hz * 1e6 / $4; rates[$2] = 1 }
            END { for (r in rates) if (("kamailio " r) in per && ("callflow " r) in per)
                printf "rate %d/s: callflow CPU per call = %.2fx Kamailio'\''s (%.0f µs / %.0f µs)\n",
                    r, per["callflow " r] / per["kamailio " r], per["callflow " r], per["kamailio " r] }' "$ROWS" | sort -t' ' -k2,2n
    fi
    if want baseline && [ "$CALLFLOW_OK" = 1 ]; then
        echo "(baseline: $BASELINE_BIN)"
        awk -v hz="$CLK_TCK" '$4 ~ /^[0-9]+$/ && $4 > 0 { per[$1 " " $2] = $8 / hz * 1e6 / $4; rates[$2] = 1 }
            END { for (r in rates) if (("baseline " r) in per && ("callflow " r) in per)
                printf "rate %d/s: callflow CPU per call = %.2fx the baseline'\''s (%.0f µs / %.0f µs)%s\n",
                    r, per["callflow " r] / per["baseline " r], per["callflow " r], per["baseline " r],
                    (("kamailio " r) in per) ? sprintf("; the baseline = %.2fx Kamailio'\''s", per["baseline " r] / per["kamailio " r]) : "" }' "$ROWS" | sort -t' ' -k2,2n
    fi
    if want callflow && [ "$CALLFLOW_OK" != 1 ]; then
        echo
        echo "callflow: NOT MEASURED: it did not answer a call (see $OUT/probe-callflow/ and $OUT/callflow.log)"
    fi
} | tee "$OUT/summary.txt"

if want callflow && [ "$CALLFLOW_OK" != 1 ]; then status=1; fi
exit $status
