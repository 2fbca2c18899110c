#!/usr/bin/env bash
# Entrypoint of the tenant-worker image (tini runs it as its only child). See docs/container.md.
#
#   entrypoint.sh [worker]            the Celery worker (default); with ENABLE_FLOWER=yes also Flower
#   entrypoint.sh flower              Flower alone
#   entrypoint.sh migrate             database migrations (python -m worker migrate)
#   entrypoint.sh healthcheck [--ready]
#                                     exit 0 when the worker's heartbeat is fresh (and, with --ready, it is
#                                     consuming); never imports the app, never talks to the broker
#   entrypoint.sh drain               this node stops consuming and waits for its running tasks (preStop)
#   entrypoint.sh COMMAND [ARGS...]   anything else is executed as given (e.g. celery inspect ping)
#
# Every setting is validated by `python -m config` (config/options.py) before anything starts: a bad value
# exits with status 64 and one line naming the variable and what is allowed.
set -Eeuo pipefail

readonly EX_USAGE=64
readonly EX_SOFTWARE=70
readonly PYTHON=python3
declare -A CFG=()

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

# Hide passwords in anything that looks like scheme://user:password@host. Up to the last @ of the word:
# generated passwords may hold / ? # @ unescaped, and masking too much is harmless.
mask_urls() {
    sed -E -e 's#([A-Za-z][A-Za-z0-9+.-]*://[^:@/[:space:]]*):[^[:space:]]*@#\1:***@#g' \
        -e 's#([?&]([Pp][Aa][Ss][Ss]([Ww][Oo][Rr][Dd])?|ssl(key)?password)=)[^&#[:space:]]*#\1***#g'
}

# Validate every variable (`python -m config check` exits 64 with one line on a bad value) and keep the
# printed values; secrets come out masked: URLs as scheme://user:***@host, others as (set)/(empty).
load_config() {
    local out line status=0
    out="$("$PYTHON" -m config check)" || status=$?
    if ((status != 0)); then
        exit "$status"
    fi
    while IFS= read -r line; do
        [[ "$line" == *=* ]] || continue
        CFG["${line%%=*}"]="${line#*=}"
    done <<<"$out"
}

log_config() {
    local name
    for name in "${!CFG[@]}"; do
        printf '%s=%s\n' "$name" "${CFG[$name]}"
    done | LC_ALL=C sort | mask_urls | sed 's/^/entrypoint: setting /' >&2
}

# The validated `celery -A worker.app worker ...` argv, NUL-separated (CELERY_WORKER_OPTS is split like a
# shell line by config, never by this script).
declare -a WORKER_ARGV=()
load_worker_argv() {
    local status=0
    mapfile -d '' -t WORKER_ARGV < <("$PYTHON" -m config worker-args)
    wait "$!" || status=$?
    if ((status != 0)); then
        exit "$status"
    fi
    if ((${#WORKER_ARGV[@]} == 0)); then
        log "python -m config worker-args printed no command"
        exit "$EX_SOFTWARE"
    fi
}

health_dir() {
    printf '%s' "${CFG[WORKER_HEALTH_DIR]:-${WORKER_HEALTH_DIR:-/tmp/worker-health}}"
}

# What this container runs, for `healthcheck`: "worker" (heartbeat file) or "flower" (Flower's /healthcheck).
write_role() {
    local dir
    dir="$(health_dir)"
    if mkdir -p "$dir" 2>/dev/null && printf '%s\n' "$1" >"$dir/role.tmp" 2>/dev/null; then
        mv -f "$dir/role.tmp" "$dir/role"
        rm -f "$dir/heartbeat" "$dir/ready"
    else
        log "WARNING: cannot write to WORKER_HEALTH_DIR=$dir (read-only filesystem without a tmpfs /tmp?);" \
            "the healthcheck will report unhealthy"
    fi
}

# --- Flower -----------------------------------------------------------------------------------------
declare -a FLOWER_ARGV=()
prepare_flower() {
    local auth="" basic status=0 port="${CFG[FLOWER_PORT]}"
    # The resolved credentials (environment, FLOWER_BASIC_AUTH_FILE or .env), handed to Flower through its
    # own FLOWER_BASIC_AUTH variable: never on a command line, never in a log.
    basic="$("$PYTHON" -c 'import sys
from config import load_settings
sys.stdout.write(load_settings(only=("FLOWER_BASIC_AUTH",)).flower_basic_auth or "")')" || status=$?
    if ((status != 0)); then
        exit "$status"
    fi
    unset FLOWER_BASIC_AUTH_FILE
    if [[ -n "$basic" ]]; then
        export FLOWER_BASIC_AUTH="$basic"
        auth="basic auth (FLOWER_BASIC_AUTH)"
    else
        unset FLOWER_BASIC_AUTH
        if [[ -n "${FLOWER_AUTH_PROVIDER:-}" && -n "${FLOWER_AUTH:-}" ]]; then
            auth="OAuth ($FLOWER_AUTH_PROVIDER)"
        fi
    fi
    if [[ -z "$auth" ]]; then
        if [[ "${CFG[FLOWER_UNAUTHENTICATED]}" != yes ]]; then
            printf '%s\n' "configuration error: Flower needs authentication; allowed: FLOWER_BASIC_AUTH (or" \
                "FLOWER_BASIC_AUTH_FILE), Flower's OAuth options FLOWER_AUTH_PROVIDER and FLOWER_AUTH," \
                "or FLOWER_UNAUTHENTICATED=yes on purpose" | paste -sd' ' >&2
            exit "$EX_USAGE"
        fi
        log "WARNING: Flower runs WITHOUT authentication (FLOWER_UNAUTHENTICATED=yes): anyone who reaches" \
            "port $port can read task arguments and results and shut workers down"
    else
        log "Flower on port $port with $auth"
    fi
    FLOWER_ARGV=(celery -A worker.app flower "--port=$port")
    # Workers gone after a rollout disappear from Flower instead of piling up (FLOWER_PURGE_OFFLINE_WORKERS
    # is Flower's own variable and wins).
    if [[ -z "${FLOWER_PURGE_OFFLINE_WORKERS:-}" ]]; then
        FLOWER_ARGV+=("--purge_offline_workers=60")
    fi
}

# --- the worker, alone or beside Flower -------------------------------------------------------------
run_worker() {
    load_config
    load_worker_argv
    local flower="${CFG[ENABLE_FLOWER]}"
    if [[ "$flower" == yes ]]; then
        prepare_flower
    fi
    log_config
    write_role worker
    log "starting: $(printf '%q ' "${WORKER_ARGV[@]}" | mask_urls)"
    if [[ "$flower" != yes ]]; then
        exec "${WORKER_ARGV[@]}"
    fi
    supervise
}

declare -i WORKER_PID=0 FLOWER_PID=0 STOPPING=0 FORWARDED=0
PENDING_SIGNAL=""
forward() {
    local sig="$1"
    STOPPING=1
    PENDING_SIGNAL="$sig"
    if ((WORKER_PID == 0 || FLOWER_PID == 0)); then
        # Not both started yet: supervise() forwards once they are. (`kill 0` would signal our own group.)
        return 0
    fi
    if ((FORWARDED)) && [[ "$sig" != QUIT ]]; then
        return 0  # signalled once already: a second TERM/INT would turn the warm shutdown into a cold one
    fi
    FORWARDED=1
    log "SIG$sig received: forwarding to the worker (pid $WORKER_PID) and Flower (pid $FLOWER_PID)"
    # TERM and INT both mean a warm shutdown; Celery exits 1 after SIGINT but 0 after SIGTERM, so INT is
    # passed on as TERM. QUIT (cold shutdown) is passed on as it is. Flower stops on TERM.
    if [[ "$sig" == INT ]]; then
        sig=TERM
    fi
    kill -s "$sig" "$WORKER_PID" 2>/dev/null || true
    kill -s TERM "$FLOWER_PID" 2>/dev/null || true
}

# Wait for one of the given pids; sets EXITED_PID and EXITED_STATUS. Signals interrupt `wait`: their trap
# runs and the wait starts again.
wait_any() {
    local pid status
    while :; do
        pid=""
        status=0
        wait -n -p pid "$@" || status=$?
        if [[ -n "${pid:-}" ]]; then
            EXITED_PID="$pid"
            EXITED_STATUS="$status"
            return 0
        fi
    done
}

supervise() {
    trap 'forward TERM' TERM
    trap 'forward INT' INT
    trap 'forward QUIT' QUIT
    "${WORKER_ARGV[@]}" &
    WORKER_PID=$!
    "${FLOWER_ARGV[@]}" &
    FLOWER_PID=$!
    log "supervising the worker (pid $WORKER_PID) and Flower (pid $FLOWER_PID)"
    if ((STOPPING)); then
        forward "$PENDING_SIGNAL"  # a signal that arrived while the children were starting
    fi

    local first first_status other other_name first_name
    wait_any "$WORKER_PID" "$FLOWER_PID"
    first="$EXITED_PID"
    first_status="$EXITED_STATUS"
    if ((first == WORKER_PID)); then
        first_name=worker other="$FLOWER_PID" other_name=Flower
    else
        first_name=Flower other="$WORKER_PID" other_name=worker
    fi
    if ((STOPPING)); then
        # Both were signalled already; a second signal would turn the worker's warm shutdown into a cold one.
        log "$first_name exited with status $first_status; waiting for $other_name"
    else
        log "$first_name exited with status $first_status; stopping $other_name"
        kill -s TERM "$other" 2>/dev/null || true
    fi
    wait_any "$other"
    log "$other_name exited with status $EXITED_STATUS"

    local status="$first_status"
    if ((STOPPING)); then
        # Asked to stop: report the worker's result (a failed warm shutdown), else Flower's.
        local worker_status="$first_status" flower_status="$EXITED_STATUS"
        if ((first != WORKER_PID)); then
            worker_status="$EXITED_STATUS" flower_status="$first_status"
        fi
        status="$worker_status"
        if ((status == 0)); then
            status="$flower_status"
        fi
    fi
    exit "$status"
}

run_flower() {
    load_config
    prepare_flower
    log_config
    write_role flower
    log "starting: $(printf '%q ' "${FLOWER_ARGV[@]}")"
    exec "${FLOWER_ARGV[@]}"
}

run_migrate() {
    load_config
    log "migrating ${CFG[MIGRATION_DATABASE_URL]:-${CFG[DATABASE_URL]}}"
    exec "$PYTHON" -m worker migrate "$@"
}

run_drain() {
    load_config
    exec "$PYTHON" -m worker.health drain "$@"
}

# --- healthcheck: bash and stat only ------------------------------------------------------------------
# Reads WORKER_HEALTH_DIR, WORKER_HEARTBEAT_MAX_AGE and FLOWER_PORT from the environment (set them there,
# not in a .env file); the worker validated them at start-up.
healthcheck() {
    local dir="${WORKER_HEALTH_DIR:-/tmp/worker-health}" max_age="${WORKER_HEARTBEAT_MAX_AGE:-60}" role=worker
    local want_ready=0
    if [[ "${1:-}" == --ready || "${1:-}" == ready ]]; then
        want_ready=1
    fi
    if [[ -r "$dir/role" ]]; then
        read -r role <"$dir/role" || true
    fi
    if [[ "$role" == flower ]]; then
        flower_healthcheck
        return
    fi
    if ! [[ "$max_age" =~ ^[0-9]{1,9}$ ]]; then
        echo "unhealthy: WORKER_HEARTBEAT_MAX_AGE=$max_age is not a number of seconds"
        return 1
    fi
    local mtime now age
    if ! mtime="$(stat -c %Y -- "$dir/heartbeat" 2>/dev/null)"; then
        echo "unhealthy: no heartbeat file $dir/heartbeat (the worker has not connected yet, or has stopped)"
        return 1
    fi
    printf -v now '%(%s)T' -1
    age=$((now - mtime))
    if ((age > 10#$max_age)); then
        echo "unhealthy: heartbeat is ${age}s old (WORKER_HEARTBEAT_MAX_AGE=${max_age}s): the consumer is stuck," \
            "stopped, or lost the broker"
        return 1
    fi
    if ((want_ready)) && [[ ! -e "$dir/ready" ]]; then
        echo "not ready: the worker is not consuming (starting, reconnecting, draining or stopping)"
        return 1
    fi
    echo "healthy: heartbeat ${age}s old"
}

flower_healthcheck() {
    local port="${FLOWER_PORT:-5555}" prefix="${FLOWER_URL_PREFIX:-}" status_line=""
    if ! [[ "$port" =~ ^[0-9]{1,5}$ ]]; then
        echo "unhealthy: FLOWER_PORT=$port is not a port number"
        return 1
    fi
    prefix="${prefix#/}"
    prefix="${prefix%/}"
    if ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
        echo "unhealthy: Flower does not accept connections on port $port"
        return 1
    fi
    printf 'GET /%s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${prefix:+$prefix/}healthcheck" >&3
    read -r -t 5 status_line <&3 || true
    exec 3>&-
    if [[ "$status_line" == "HTTP/1."?" 200"* ]]; then
        echo "healthy: Flower answers on port $port"
        return 0
    fi
    echo "unhealthy: Flower's /healthcheck answered '${status_line%$'\r'}'"
    return 1
}

main() {
    local command="${1:-worker}"
    if (($# > 0)); then
        shift
    fi
    case "$command" in
        worker)
            if (($# > 0)); then
                log "'worker' takes no arguments (got: $*); use CELERY_WORKER_OPTS for extra celery worker options"
                exit "$EX_USAGE"
            fi
            run_worker
            ;;
        flower) run_flower ;;
        migrate) run_migrate "$@" ;;
        drain) run_drain "$@" ;;
        healthcheck) healthcheck "$@" ;;
        *) exec "$command" "$@" ;;
    esac
}

main "$@"
