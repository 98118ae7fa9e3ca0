#!/usr/bin/env bash
# End-to-end flow benchmark (issue 6): SIPp calls `callflow serve` inbound at rising fixed call
# rates; every call runs the built-in TwiML interpreter on a document served by a local webhook
# (bench/twiml_app.py: <Play> of a short 8 kHz tone WAV served by the same app, <Pause>,
# <Hangup/>), so each call costs the VoiceUrl fetch, the flow's Wasm steps, a prompt from the
# cache, RTP for the prompt and the pause, and callflow's BYE (bench/uac_flow.xml answers it).
# Next to SIPp's load, bench/probe.py places a few calls per second of its own and timestamps
# what SIPp cannot: the 200 and the first RTP packet (and the first packet carrying audio).
#
# For each rate it reports: SIPp's successful and failed calls, the achieved call setups per
# second (200s received over the span they arrived in), SIPp's retransmissions, p50/p99 INVITE→200
# (SIPp, whole ms) and 200→callflow's BYE (the flow's run); the probe's p50/p99 INVITE→200
# and answer→first RTP packet and answer→first audio packet (kernel receive times); callflow's
# CPU over the window (utime + stime from /proc/PID/stat, as % of one core and as CPU-ms per
# call), its RSS (the largest VmRSS sampled every 0.5 s in the window), and the whole machine's
# CPU and load average, because the machine is shared. Loopback only; every step is bounded in
# time; everything started here is stopped on exit.
#
#   bench/flows.sh                          # rates 10 25 50 100, 30 s of calls each (~2.5 min after the build)
#   RATES="50 100 150" DURATION=20 bench/flows.sh
#
# Settings (environment): RATES (SIPp calls/s, default "10 25 50 100"), DURATION (s of calls per
# rate, default 30; SIPp's calls = rate x DURATION, at most MAX_CALLS, default 20000),
# PROBE_RATE (the probe's calls/s on top, default 4), TONE_MS (the prompt's length, default 500),
# PAUSE_S (the <Pause>, default 1), SETTLE_S (pause between rates, default 3), OUT (folder for raw
# output, default target/bench/flows-<time>), BIN (a callflow binary to measure instead of
# building target/release/callflow, e.g. an older commit's for a before/after). Needs sipp (Debian sip-tester, installed with
# apt-get when missing), curl and python3. Exits non-zero if callflow did not take calls or any
# call failed.
set -euo pipefail
export LC_ALL=C

RATES=${RATES:-"10 25 50 100"}
DURATION=${DURATION:-30}
MAX_CALLS=${MAX_CALLS:-20000}
PROBE_RATE=${PROBE_RATE:-4}
TONE_MS=${TONE_MS:-500}
PAUSE_S=${PAUSE_S:-1}
SETTLE_S=${SETTLE_S:-3}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}
STARTUP_TIMEOUT_S=30
NUMBER="+15005550006"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/flows-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
SCENARIO=$ROOT/bench/uac_flow.xml

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

for r in $RATES; do
    [[ $r =~ ^[1-9][0-9]*$ ]] && [ "$r" -le 1000 ] || die "RATES must be whole calls per second up to 1000: '$r'"
done
[ -n "$RATES" ] || die "RATES is empty"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] && [ "$DURATION" -le 600 ] || die "DURATION must be 1 to 600 s"
[[ $PROBE_RATE =~ ^[1-9][0-9]*$ ]] && [ "$PROBE_RATE" -le 20 ] || die "PROBE_RATE must be 1 to 20 calls/s"
[[ $TONE_MS =~ ^[1-9][0-9]*$ ]] && [ "$TONE_MS" -le 10000 ] || die "TONE_MS must be 1 to 10000"
[[ $PAUSE_S =~ ^[0-9]+$ ]] && [ "$PAUSE_S" -le 10 ] || die "PAUSE_S must be 0 to 10"
[[ $SETTLE_S =~ ^[0-9]+$ ]] && [ "$SETTLE_S" -le 60 ] || die "SETTLE_S must be 0 to 60"

# ---- tools ------------------------------------------------------------------------------------
command -v sipp >/dev/null 2>&1 || install sip-tester
command -v sipp >/dev/null 2>&1 || die "sipp not found after installing sip-tester"
command -v curl >/dev/null 2>&1 || die "curl is needed"
command -v python3 >/dev/null 2>&1 || die "python3 is needed"

# ---- build ------------------------------------------------------------------------------------
dirty() { [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; }
DIRTY=0
if dirty; then DIRTY=1; fi
build_callflow
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
# other work may edit the tree while this builds: say so if it was edited before or after
if [ "$DIRTY" = 1 ] || dirty; then COMMIT="$COMMIT (with uncommitted changes)"; fi
if [ -n "${BIN:-}" ]; then COMMIT="$BIN"; fi

# ---- processes --------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/callflow-flowbench.XXXXXX")
CALLFLOW_PID=""
APP_PID=""
SAMPLER_PID=""
PROBE_PID=""
cleanup() {
    stop_pids $SAMPLER_PID $PROBE_PID $CALLFLOW_PID $APP_PID
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Settings come only from the flags and the file below, not from the caller's CALLFLOW_*.
for v in $(compgen -e | grep '^CALLFLOW_' || true); do unset "$v"; done

APP_PORT=$(free_port)
python3 "$ROOT/bench/twiml_app.py" "$APP_PORT" --tone-ms "$TONE_MS" --pause-s "$PAUSE_S" >"$OUT/app.log" 2>&1 &
APP_PID=$!
APP=http://127.0.0.1:$APP_PORT
wait_http "$APP/stats" "$APP_PID" "TwiML app" "$OUT/app.log"

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
ACCOUNT_SID="AC$(hex 16)"
AUTH_TOKEN=$(hex 16)
HTTP_PORT=$(free_port)
SIP_PORT=$(free_port)
# One trunk: inbound calls from 127.0.0.1, no channel limit; its gateway is never called here.
cat >"$OUT/callflow.toml" <<EOF
[webhooks]
allow_private = true

[[trunks]]
name = "bench"
host = "127.0.0.1"
port = $(free_port)
transport = "udp"
inbound_sources = ["127.0.0.1/32"]
max_channels = 0
EOF
start_callflow "$SIP_PORT" "$OUT/callflow.toml"
create_number "$NUMBER" "$APP/voice"

# probe ARGS...: bench/probe.py against callflow, bounded from outside too
probe() {
    timeout 600 python3 "$ROOT/bench/probe.py" --target "127.0.0.1:$SIP_PORT" --number "$NUMBER" "$@"
}
# The first calls check the whole path (answer, audio, callflow's BYE) and fill the prompt cache.
log "warm-up: probe calls until one is answered with audio and hung up by the flow"
mkdir -p "$OUT/warmup"
deadline=$((SECONDS + STARTUP_TIMEOUT_S))
until probe --calls 3 --rate 3 --call-timeout 10 --csv "$OUT/warmup/calls.csv" >"$OUT/warmup/probe.txt" 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$CALLFLOW_PID" 2>/dev/null; then
        cat "$OUT/warmup/probe.txt" "$OUT/warmup/calls.csv" >&2 || true
        tail -n 30 "$OUT/callflow.log" >&2 || true
        die "callflow did not complete a probe call within ${STARTUP_TIMEOUT_S} s (see $OUT/warmup)"
    fi
    sleep 1
done
cat "$OUT/warmup/probe.txt" >&2

# ---- measurement ------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
ticks() { # pids... -> utime + stime, in clock ticks, summed
    local pid
    for pid in "$@"; do cat "/proc/$pid/stat" 2>/dev/null || true; done |
        awk '{ r = substr($0, index($0, ")") + 2); split(r, f, " "); t += f[12] + f[13] } END { print t + 0 }'
}
machine() { # -> busy and total ticks of the whole machine (user nice system irq softirq steal; + idle iowait)
    awk '$1 == "cpu" { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}
csv_field() { # file column -> the column's value in the last row of a SIPp statistics CSV
    awk -F';' -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        { v = $c } END { print (c && v != "" ? v : "?") }' "$1"
}
pct() { # p -> nearest-rank percentile of the numbers on stdin, "?" if none
    sort -n | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "?"; exit }
        i = int(NR * p / 100); if (i < NR * p / 100) i++; if (i < 1) i = 1; print v[i] }'
}
json_get() { # file key [subkey] -> the value, "?" if missing or null
    python3 - "$@" <<'EOF'
import json, sys
try:
    v = json.load(open(sys.argv[1]))
    for k in sys.argv[2:]:
        v = v[k]
    print("?" if v is None else (f"{v:.1f}" if isinstance(v, float) else v))
except Exception:
    print("?")
EOF
}
app_count() { curl -fsS --max-time 5 "$APP/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], 0))' "$1" 2>/dev/null || echo '?'; }

CALL_S=$(((TONE_MS + 999) / 1000 + PAUSE_S))
ROWS=$OUT/rows.txt
: >"$ROWS"
status=0
log "load average before the rates: $(cut -d' ' -f1-3 /proc/loadavg); raw output in $OUT"
for rate in $RATES; do
    calls=$((rate * DURATION))
    [ "$calls" -le "$MAX_CALLS" ] || calls=$MAX_CALLS
    limit=$((rate * (CALL_S + 5) * 2 + 100))
    secs=$((DURATION * 2 + 60))
    dir=$OUT/rate-$rate
    mkdir -p "$dir"
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "rate $rate/s: $calls SIPp calls, probe at $PROBE_RATE/s (load average $load)"
    voice0=$(app_count /voice)
    # callflow's RSS every 0.5 s during the window
    (while kill -0 "$CALLFLOW_PID" 2>/dev/null; do
        awk '$1 == "VmRSS:" { print $2 }' "/proc/$CALLFLOW_PID/status" 2>/dev/null || true
        sleep 0.5
    done) >"$dir/rss.txt" &
    SAMPLER_PID=$!
    read -r m_busy0 m_total0 < <(machine)
    t0=$(ticks "$CALLFLOW_PID")
    a0=$(ticks "$APP_PID")
    w0=$(date +%s%N)
    probe --rate "$PROBE_RATE" --duration "$DURATION" --call-timeout 20 --csv "$dir/probe.csv" \
        --json "$dir/probe.json" >"$dir/probe.txt" 2>&1 &
    PROBE_PID=$!
    rc=0
    (
        cd "$dir"
        TIMEFORMAT='%U %S'
        {
            time timeout $((secs + 30)) sipp "127.0.0.1:$SIP_PORT" -sf "$SCENARIO" -s "$NUMBER" \
                -r "$rate" -m "$calls" -l "$limit" -i 127.0.0.1 -p "$(free_port)" -mp "$(free_port)" \
                -ci 127.0.0.1 -timeout "${secs}s" -timeout_error -nostdin -trace_stat -stf stat.csv \
                -fd 5 -trace_rtt -rtt_freq 1 -trace_err -error_file errors.log -trace_screen \
                -screen_file screen.log >stdout.log 2>stderr.log
        } 2>sipp-cpu.txt
    ) || rc=$?
    probe_rc=0
    wait "$PROBE_PID" || probe_rc=$?
    PROBE_PID=""
    w1=$(date +%s%N)
    t1=$(ticks "$CALLFLOW_PID")
    a1=$(ticks "$APP_PID")
    read -r m_busy1 m_total1 < <(machine)
    stop_pids "$SAMPLER_PID"
    SAMPLER_PID=""
    voice1=$(app_count /voice)

    ok=$(csv_field "$dir/stat.csv" 'SuccessfulCall(C)' 2>/dev/null || echo '?')
    failed=$(csv_field "$dir/stat.csv" 'FailedCall(C)' 2>/dev/null || echo '?')
    retrans=$(csv_field "$dir/stat.csv" 'Retransmissions(C)' 2>/dev/null || echo '?')
    rtt() { (cat "$dir"/*_rtt.csv 2>/dev/null || true) | awk -F';' -v n="$1" '$3 == n'; }
    # setups/s: the 200s SIPp received, over the span between the first and the last
    setups=$(rtt invite | awk -F';' 'NR == 1 { a = $1 } { b = $1; n++ }
        END { print (n > 1 && b > a) ? sprintf("%.1f", (n - 1) * 1000 / (b - a)) : "?" }')
    s_inv50=$(rtt invite | cut -d';' -f2 | pct 50)
    s_inv99=$(rtt invite | cut -d';' -f2 | pct 99)
    s_call50=$(rtt call | cut -d';' -f2 | pct 50)
    s_call99=$(rtt call | cut -d';' -f2 | pct 99)
    p_calls=$(json_get "$dir/probe.json" calls)
    p_ok=$(json_get "$dir/probe.json" ok)
    p_answered=$(json_get "$dir/probe.json" answered)
    p_inv50=$(json_get "$dir/probe.json" invite_to_200 p50)
    p_inv99=$(json_get "$dir/probe.json" invite_to_200 p99)
    p_rtp50=$(json_get "$dir/probe.json" answer_to_rtp p50)
    p_rtp99=$(json_get "$dir/probe.json" answer_to_rtp p99)
    p_aud50=$(json_get "$dir/probe.json" answer_to_audio p50)
    p_aud99=$(json_get "$dir/probe.json" answer_to_audio p99)
    p_audmax=$(json_get "$dir/probe.json" answer_to_audio max)
    rss=$(sort -n "$dir/rss.txt" | tail -n1)
    sipp_cpu=$(awk '{ print $1 + $2 }' "$dir/sipp-cpu.txt" 2>/dev/null | tail -n1 || true)
    fetches=$([ "$voice0" != '?' ] && [ "$voice1" != '?' ] && echo $((voice1 - voice0)) || echo '?')
    echo "$rate $calls $ok $failed $setups $retrans $s_inv50 $s_inv99 $s_call50 $s_call99" \
        "$p_calls $p_ok $p_answered $p_inv50 $p_inv99 $p_rtp50 $p_rtp99 $p_aud50 $p_aud99 $p_audmax" \
        "$((t1 - t0)) $(((w1 - w0) / 1000000)) ${rss:-0} $((m_busy1 - m_busy0)) $((m_total1 - m_total0))" \
        "${sipp_cpu:-?} $((a1 - a0)) $fetches $load $rc" >>"$ROWS"
    if [ "$rc" != 0 ] || [ "$failed" != 0 ] || [ "$probe_rc" != 0 ]; then
        log "warning: rate $rate/s: SIPp exited $rc with $failed failed calls; the probe: $(head -n1 "$dir/probe.txt") (see $dir)"
        status=1
    fi
    sleep "$SETTLE_S"
done

# ---- report -----------------------------------------------------------------------------------
{
    echo "callflow end-to-end flow benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT," \
        "$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo))"
    echo "SIPp $(sipp -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -n1 || true) bench/uac_flow.xml;" \
        "TwiML: <Play> ${TONE_MS} ms tone (cached), <Pause length=\"$PAUSE_S\"/>, <Hangup/>;" \
        "${DURATION} s of calls per rate, probe at ${PROBE_RATE}/s; raw output in $OUT"
    echo
    echo "| rate/s | SIPp calls | ok | failed | setups/s | retrans | INVITE→200 p50/p99 | 200→BYE p50/p99 | probe ok | probe INVITE→200 p50/p99 | answer→1st RTP p50/p99 | answer→1st audio p50/p99 (max) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk '{
        printf "| %d | %d | %s | %s | %s | %s | %s / %s ms | %s / %s ms | %s/%s | %s / %s ms | %s / %s ms | %s / %s ms (%s) |\n",
            $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, $14, $15, $16, $17, $18, $19, $20
    }' "$ROWS"
    echo
    echo "| rate/s | callflow CPU | CPU-ms per call | max RSS | machine CPU | SIPp CPU | app CPU | VoiceUrl fetches | load avg before |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -v hz="$CLK_TCK" -v ncpu="$(nproc)" '{
        ticks = $21; ms = $22; rss = $23; mbusy = $24; mtotal = $25; sipp = $26; app = $27
        calls = ($3 ~ /^[0-9]+$/ ? $3 : 0) + ($13 ~ /^[0-9]+$/ ? $13 : 0)
        cpu = (ms > 0) ? sprintf("%.0f%%", 100 * ticks / hz / (ms / 1000)) : "?"
        per = (calls > 0) ? sprintf("%.2f", ticks / hz * 1000 / calls) : "n/a"
        mach = (mtotal > 0) ? sprintf("%.0f%% of %d", 100 * ncpu * mbusy / mtotal, 100 * ncpu) : "?"
        scpu = (ms > 0 && sipp ~ /^[0-9.]+$/) ? sprintf("%.0f%%", 100 * sipp / (ms / 1000)) : "?"
        acpu = (ms > 0) ? sprintf("%.0f%%", 100 * app / hz / (ms / 1000)) : "?"
        printf "| %d | %s | %s | %.1f MiB | %s | %s | %s | %s | %s |\n",
            $1, cpu, per, rss / 1024, mach, scpu, acpu, $28, $29
    }' "$ROWS"
    echo
    echo "(setups/s: SIPp's 200s over the span from the first to the last, the probe's calls not counted;"
    echo " SIPp's times are whole ms (they came in 4 ms steps on the 2-vCPU development machine); the"
    echo " probe's are from kernel receive timestamps, with percentiles by"
    echo " nearest rank over the probe's calls, so p99 is about the largest; 1st audio = the first RTP"
    echo " payload that is not all µ-law silence, i.e. the prompt. CPU over the window from SIPp's start"
    echo " to the last call's end, in % of one core; CPU-ms per call over SIPp's and the probe's answered"
    echo " calls; RSS = the largest VmRSS sampled every 0.5 s. The app (bench/twiml_app.py) and SIPp run"
    echo " on the same $(nproc) CPUs, their CPU is not in callflow's figures.)"
} | tee "$OUT/summary.txt"

exit $status
