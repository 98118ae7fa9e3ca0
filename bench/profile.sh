#!/usr/bin/env bash
# Per-call CPU profile of the bench/sip.sh path: runs bench/sip.sh against callflow alone at one
# rate, attaches `perf record` (software cpu-clock sampling with DWARF call graphs; no hardware
# counters are needed) to callflow for PROFILE_S seconds in the middle of the run, and classifies
# every sample by stage with bench/profile_stages.py: each stage's share of callflow's CPU and,
# scaled by the run's own CPU per call, its µs per call. perf's unwinding adds to the target's
# CPU while it records, so the µs are the shares of the run's CPU per call measured by sip.sh.
#
#   bench/profile.sh                       # 300 calls/s, 40 s of calls, 15 s profiled
#   RATE=600 BIN=target/release/callflow bench/profile.sh
#
# Settings: RATE (default 300), DURATION (s of calls, default 40), PROFILE_S (default 15),
# BIN (a callflow binary; default: sip.sh builds target/release/callflow), OUT (default
# target/bench/profile-<time>). Needs perf (Debian linux-perf, installed with apt-get when
# missing) and what bench/sip.sh needs. Every step is bounded in time.
set -euo pipefail
export LC_ALL=C
RATE=${RATE:-300}
DURATION=${DURATION:-40}
PROFILE_S=${PROFILE_S:-15}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[[ $RATE =~ ^[1-9][0-9]*$ ]] || die "RATE must be whole calls per second"
[[ $PROFILE_S =~ ^[1-9][0-9]*$ ]] && [ "$PROFILE_S" -lt "$DURATION" ] || die "PROFILE_S must be 1 to DURATION-1"
command -v perf >/dev/null 2>&1 || install linux-perf
command -v perf >/dev/null 2>&1 || die "perf not found after installing linux-perf"

log "bench/sip.sh at $RATE/s for ${DURATION}s (output in $OUT/sip)"
RATES=$RATE DURATION=$DURATION TARGETS=callflow OUT="$OUT/sip" bench/sip.sh >"$OUT/sip.log" 2>&1 &
SIP=$!
trap 'kill $SIP 2>/dev/null || true' EXIT
deadline=$((SECONDS + 2400))
until grep -q "calls at $RATE/s" "$OUT/sip.log" 2>/dev/null; do
    kill -0 $SIP 2>/dev/null || { tail -n 20 "$OUT/sip.log" >&2; die "bench/sip.sh ended before measuring"; }
    [ $SECONDS -lt $deadline ] || die "bench/sip.sh did not start measuring in time"
    sleep 1
done
sleep $(((DURATION - PROFILE_S) / 2))
PID=$(cat "$OUT/sip/callflow.pid" 2>/dev/null || true)
[ -n "$PID" ] && kill -0 "$PID" 2>/dev/null || die "callflow's process not found ($OUT/sip/callflow.pid)"
log "perf record on pid $PID for ${PROFILE_S}s"
timeout $((PROFILE_S + 60)) perf record -F 999 -g --call-graph dwarf,32768 -p "$PID" \
    -o "$OUT/perf.data" -- sleep "$PROFILE_S" >"$OUT/perf-record.log" 2>&1 || die "perf record failed"
# sip.sh bounds its own run; wait for it to report
wait $SIP || true
trap - EXIT
[ -s "$OUT/sip/rows.txt" ] || die "bench/sip.sh measured nothing (see $OUT/sip.log)"
# rows: target rate calls ok failed retrans p99 ticks ms hwm sipp drops rc
PER_CALL=$(awk -v hz="$(getconf CLK_TCK)" '$1 == "callflow" && $4 > 0 { printf "%.0f", $8 / hz * 1e6 / $4 }' "$OUT/sip/rows.txt")
log "classifying the samples (the run's CPU per call: ${PER_CALL} µs)"
timeout 1800 perf script -i "$OUT/perf.data" -F comm,tid,ip,sym --no-inline >"$OUT/perf.script" 2>/dev/null
{
    echo "callflow per-call profile: $(date -u '+%Y-%m-%d %H:%M UTC'), $RATE calls/s, ${PROFILE_S}s of samples; raw output in $OUT"
    cat "$OUT/sip/summary.txt" | sed -n '/^| target/,/^$/p'
    python3 "$ROOT/bench/profile_stages.py" "$OUT/perf.script" "$PER_CALL"
} | tee "$OUT/summary.txt"
