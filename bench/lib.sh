# Shared by the benchmark scripts (sourced, not run): logging, installing a Debian package,
# free loopback ports, waiting for a server, stopping processes. Every wait is bounded.
# The sourcing script sets STARTUP_TIMEOUT_S before calling wait_http.

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# install PACKAGE: apt-get install (sudo unless root), and apt-get update first only if that fails.
install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "$1 is missing and we are not root; install $1"
        sudo="sudo"
    fi
    log "$1 not found: installing it with apt-get"
    if ! timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; then
        timeout 900 $sudo apt-get update -qq || die "apt-get update failed"
        timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null \
            || die "apt-get install $1 failed"
    fi
}

# A loopback port free now for both TCP and UDP (checked with ss, else by connecting over TCP),
# never handed out twice by one script.
used_ports=" "
free_port() {
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 40000))
        case "$used_ports" in *" $port "*) continue ;; esac
        if command -v ss >/dev/null 2>&1; then
            [ -z "$(ss -Htuan "( sport = :$port )" 2>/dev/null)" ] || continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        used_ports="$used_ports$port "
        echo "$port"
        return 0
    done
    die "no free loopback port found"
}

wait_http() { # url pid name log
    local deadline=$((SECONDS + STARTUP_TIMEOUT_S))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$2" 2>/dev/null || { tail -n 40 "$4" >&2; die "$3 exited during startup"; }
        if curl -fsS --max-time 1 -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    tail -n 40 "$4" >&2
    die "$3 did not answer $1 within ${STARTUP_TIMEOUT_S} s"
}

# start_callflow SIP_PORT CONFIG [NAME=VALUE...]: `callflow serve` ($CALLFLOW_BIN) with the root
# credentials ACCOUNT_SID/AUTH_TOKEN, HTTP on 127.0.0.1:$HTTP_PORT, SIP on 127.0.0.1:SIP_PORT, data
# in $TMP/$BENCH_NAME-data, log in $OUT/$BENCH_NAME.log (BENCH_NAME defaults to callflow), the
# extra environment given (its log filter: BENCH_RUST_LOG, default warn; e.g. "warn,sqlx::query=debug"
# lists every statement); sets CALLFLOW_PID and returns once /health answers.
start_callflow() {
    local sip_port=$1 config=$2 name=${BENCH_NAME:-callflow}
    shift 2
    local data="$TMP/data"
    [ "$name" = callflow ] || data="$TMP/$name-data"
    log "starting $name ($CALLFLOW_BIN): http 127.0.0.1:$HTTP_PORT, sip udp 127.0.0.1:$sip_port (data in $data)"
    env RUST_LOG="${BENCH_RUST_LOG:-warn}" CALLFLOW_ROOT_ACCOUNT_SID="$ACCOUNT_SID" CALLFLOW_ROOT_AUTH_TOKEN="$AUTH_TOKEN" "$@" \
        "$CALLFLOW_BIN" serve --http "127.0.0.1:$HTTP_PORT" --sip "127.0.0.1:$sip_port" \
        --data "$data" --config "$config" >"$OUT/$name.log" 2>&1 &
    CALLFLOW_PID=$!
    echo "$CALLFLOW_PID" >"$OUT/$name.pid"
    wait_http "http://127.0.0.1:$HTTP_PORT/health" "$CALLFLOW_PID" "$name" "$OUT/$name.log"
}

# build_callflow: sets CALLFLOW_BIN to $BIN when given (a binary built elsewhere, e.g. an older
# commit's), else builds target/release/callflow.
build_callflow() {
    if [ -n "${BIN:-}" ]; then
        CALLFLOW_BIN=$BIN
        [ -x "$CALLFLOW_BIN" ] || die "BIN=$BIN is not an executable"
        log "using $CALLFLOW_BIN (BIN)"
        return 0
    fi
    CALLFLOW_BIN=$ROOT/target/release/callflow
    log "building callflow (release; waits for cargo's lock if another build holds it)"
    timeout "$BUILD_TIMEOUT_S" cargo build --release --locked -p callflow-server --bin callflow >&2 \
        || die "cargo build failed or took more than ${BUILD_TIMEOUT_S} s"
    [ -x "$CALLFLOW_BIN" ] || die "built binary $CALLFLOW_BIN not found"
}

# create_number NUMBER VOICE_URL: the root account's number, its VoiceUrl POSTed.
create_number() {
    local body
    body=$(curl -sS --max-time 10 -u "$ACCOUNT_SID:$AUTH_TOKEN" -w '\n%{http_code}' \
        --data-urlencode "PhoneNumber=$1" --data-urlencode "VoiceUrl=$2" \
        --data-urlencode "VoiceMethod=POST" \
        "http://127.0.0.1:$HTTP_PORT/2010-04-01/Accounts/$ACCOUNT_SID/IncomingPhoneNumbers.json")
    [ "${body##*$'\n'}" = 201 ] || die "creating the number answered: $body"
}

# stop_pids PID...: TERM, up to 10 s each to exit (callflow waits at most that for webhooks in
# flight), then KILL.
stop_pids() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
