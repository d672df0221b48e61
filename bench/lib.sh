# bench/lib.sh: what the benchmark scripts share (sourced, not run). Each
# script sets T (its temp dir) before starting anything, and may define
#   bench_stop   stop what it started its own way (before the TERM signals),
#   bench_alive  succeed while any of that is still running,
#   bench_kill   kill what is left of it (after the KILL signals).

say() { printf '%s\n' "$*" >&2; }
die() { say "$(basename "$0"): $*"; exit 1; }

PIDS=()

# Stops every process started with `start` (TERM, 5 s, KILL), removes $T
# unless KEEP=1, and exits with the script's status.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    if declare -F bench_stop >/dev/null; then bench_stop; fi
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        if declare -F bench_alive >/dev/null && bench_alive; then alive=1; fi
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if declare -F bench_kill >/dev/null; then bench_kill; fi
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then say "kept $T"; else rm -rf "$T"; fi
    exit $rc
}

# start NAME CMD... : runs CMD in the background, stdout+stderr to $T/NAME.log
start() {
    local name=$1; shift
    "$@" >"$T/$name.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$name=$!"
}

# wait_port ADDR PORT : until something accepts there (10 s at most)
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $1:$2 (see $T/*.log)"
}

# cpu_busy [SECONDS] : percent of CPU used by anything (the benchmark is idle meanwhile)
cpu_busy() {
    local a b
    a=($(head -1 /proc/stat)); sleep "${1:-1}"; b=($(head -1 /proc/stat))
    local tot=0 idle i
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    idle=$(( (b[4] - a[4]) + (b[5] - a[5]) ))
    echo $(( tot > 0 ? 100 * (tot - idle) / tot : 0 ))
}

# haproxy_conf FILE LISTEN_PORT BACKEND_PORT : haproxy in TCP mode on
# 127.0.0.1:LISTEN_PORT in front of 127.0.0.1:BACKEND_PORT, with $MAXCONN
# connections at most (more wait in its accept queue)
haproxy_conf() {
    cat >"$1" <<EOF
global
    maxconn $MAXCONN
defaults
    mode tcp
    maxconn $MAXCONN
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend smtp
    bind 127.0.0.1:$2
    default_backend sink
backend sink
    server sink 127.0.0.1:$3
EOF
}
