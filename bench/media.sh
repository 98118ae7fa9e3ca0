#!/usr/bin/env bash
# Media benchmark (issue 5): N concurrent calls, each playing one shared prompt in a loop and
# recording, driven by our RTP load generator (host/media/benches/load.rs), next to a raw UDP
# send/receive loop with the same sockets and packet pattern, measured in the same run as the
# ceiling. For each N it reports the SUT's CPU and µs per packet, the generator's CPU, the SUT's
# RSS and RSS per call, packets late by more than 40 ms and loss; then callflow's packets per
# CPU-second as a share of the raw loop's, and the largest N that holds the quality bar
# (< 0.1% late, no loss). Loopback only; the system under test and the generator are separate
# processes on the same machine; every step is bounded in time.
#
#   bench/media.sh                          # N = 250 500 1000 2000 3000, 10 s each after 2 s
#   NS="1000 2000" DURATION=20 bench/media.sh
#   WORKERS=2 bench/media.sh                # two media worker threads (and two raw threads)
#
# Settings (environment): NS (calls per step, each at most 6000), DURATION (s measured per step,
# default 10), WARMUP (s before it, default 2), WORKERS (default 1), PORT_MIN (the SUT's first
# RTP port, default 20000), OUT (folder for raw output, default target/bench/media-<time>).
# Each process holds one socket per call, so the soft open-files limit is raised (up to the
# hard limit) when it is below the largest N plus 64.
set -euo pipefail
export LC_ALL=C

NS=${NS:-"250 500 1000 2000 3000"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WORKERS=${WORKERS:-1}
BUILD_TIMEOUT_S=${BUILD_TIMEOUT_S:-1800}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/bench/media-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

max_n=0
steps=0
for n in $NS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 6000 ] || die "NS must be whole numbers of calls up to 6000: '$n'"
    if [ "$n" -gt "$max_n" ]; then max_n=$n; fi
    steps=$((steps + 2))
done
[ "$steps" -gt 0 ] || die "NS is empty"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] && [ "$DURATION" -le 600 ] || die "DURATION must be 1 to 600 s"
[[ $WARMUP =~ ^[1-9][0-9]*$ ]] && [ "$WARMUP" -le 60 ] || die "WARMUP must be 1 to 60 s"

# ---- open files -------------------------------------------------------------------------------
need=$((max_n + 64))
soft=$(ulimit -Sn)
if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
        die "N = $max_n needs $need open files per process; the hard limit is $hard"
    fi
    ulimit -Sn "$need" || die "could not raise the open-files limit to $need"
    log "open-files limit raised from $soft to $need"
fi

# ---- build ------------------------------------------------------------------------------------
log "building the load bench (release, as cargo bench does)"
timeout "$BUILD_TIMEOUT_S" cargo bench --locked -p callflow-media --bench load --no-run \
    --message-format=json-render-diagnostics >"$OUT/build.json" \
    || die "cargo bench --no-run failed or took more than ${BUILD_TIMEOUT_S} s"
BIN=$(grep '"kind":\["bench"\]' "$OUT/build.json" | grep '"name":"load"' |
    grep -o '"executable":"[^"]*"' | tail -n1 | sed 's/^"executable":"//; s/"$//')
[ -n "$BIN" ] && [ -x "$BIN" ] || die "built bench binary not found (see $OUT/build.json)"

# ---- run --------------------------------------------------------------------------------------
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg); raw output in $OUT"
# each step: start-up, warm-up, window, shutdown and a pause, well under WARMUP + DURATION + 60 s
limit=$((steps * (WARMUP + DURATION + 60) + 60))
status=0
NS=$NS DURATION=$DURATION WARMUP=$WARMUP WORKERS=$WORKERS CLK_TCK=$(getconf CLK_TCK) OUT=$OUT \
    timeout "$limit" "$BIN" --bench 2> >(tee "$OUT/run.log" >&2) | tee "$OUT/summary.md" || status=$?
[ "$status" = 0 ] || die "the load bench failed (exit $status); see $OUT/run.log and the *-sut.log and *-gen.log files"
