# bench/lib.sh: what the benchmark scripts share (sourced, not run). Each
# script sets T (its temp dir) before starting anything, and may define
#   bench_stop   stop what it started its own way (before the TERM signals),
#   bench_alive  succeed while any of that is still running,
#   bench_kill   kill what is left of it (after the KILL signals).

say() { printf '%s\n' "$*" >&2; }
die() { say "$(basename "$0"): $*"; exit 1; }

PIDS=()

# Stops every process started with `start` and every Postfix instance
# started with `postfix_start` (TERM, 5 s, KILL), removes $T
# unless KEEP=1, and exits with the script's status.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    if declare -F bench_stop >/dev/null; then bench_stop; fi
    postfix_stop_all
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        if declare -F bench_alive >/dev/null && bench_alive; then alive=1; fi
        postfix_alive && alive=1
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if declare -F bench_kill >/dev/null; then bench_kill; fi
    postfix_kill_all
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

# begin_run : cleanup on exit, BUSY = how busy the CPU was before the start
# (with a warning above 15%)
begin_run() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    BUSY=$(cpu_busy)
    if [ "$BUSY" -gt 15 ]; then
        say "WARNING: the machine was ${BUSY}% busy before the benchmark started; numbers will be noisy"
    fi
}

# snapshot_blackpony : runs a copy in $T (a `cargo build` during the run must
# not swap the binary between rows): BLACKPONY -> the copy, BP_SRC the
# original, BP_BUILT its time
snapshot_blackpony() {
    BP_BUILT=$(date -u -r "$BLACKPONY" +%Y-%m-%dT%H:%MZ)
    BP_SRC=$(realpath "$BLACKPONY")
    cp "$BLACKPONY" "$T/blackpony"
    BLACKPONY=$T/blackpony
}

# repo_head : "repo HEAD <rev>" (", src/ had uncommitted changes" when so) of the
# checkout the benchmarked binary was built in: the nearest folder above the binary
# with a Cargo.toml in a git work tree (target/release/blackpony), else the one this
# script sits in; '?' when neither is a checkout (a copy of bench/ in /tmp running a
# binary from a separate CARGO_TARGET_DIR)
repo_head() {
    local d repo=""
    d=$(dirname "$(realpath "${BP_SRC:-$BLACKPONY}")")
    while [ "$d" != / ] && [ -n "$d" ]; do
        if [ -f "$d/Cargo.toml" ] && git -C "$d" rev-parse --git-dir >/dev/null 2>&1; then
            repo=$d
            break
        fi
        d=$(dirname "$d")
    done
    if [ -z "$repo" ] && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then repo=$ROOT; fi
    if [ -z "$repo" ]; then echo "repo HEAD ?"; return; fi
    printf 'repo HEAD %s (%s)' "$(git -C "$repo" rev-parse --short HEAD)" "$repo"
    if [ -n "$(git -C "$repo" status --porcelain -- src 2>/dev/null)" ]; then
        printf ', src/ had uncommitted changes'
    fi
    echo
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

# haproxy_conf FILE LISTEN_PORT BACKEND_PORT [BACKEND_ADDR] : haproxy in TCP
# mode on 127.0.0.1:LISTEN_PORT in front of BACKEND_ADDR (127.0.0.1 unless
# given):BACKEND_PORT, with $MAXCONN connections at most (more wait in its
# accept queue)
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
    server sink ${4:-127.0.0.1}:$3
EOF
}

# ------------------------------------------------------------------ private Postfix instances
# (outbound.sh, seal.sh), stopped by `cleanup`: `postfix stop`, then killed.
POSTFIXES=()

# postfix_env_pids DIR : processes of the Postfix instance whose config is DIR
postfix_env_pids() {
    local f
    for f in /proc/[0-9]*/environ; do
        { tr '\0' '\n' <"$f" | grep -qx "MAIL_CONFIG=$1"; } 2>/dev/null && { f=${f#/proc/}; echo "${f%/environ}"; }
    done
    return 0
}

# `postfix stop` for each instance started with postfix_start
postfix_stop_all() {
    local d
    for d in "${POSTFIXES[@]}"; do
        timeout 30 script -qc "postfix -c $d stop" /dev/null >/dev/null 2>&1 || true
    done
}
postfix_alive() {
    local d
    for d in "${POSTFIXES[@]}"; do [ -n "$(postfix_env_pids "$d")" ] && return 0; done
    return 1
}
postfix_kill_all() {
    local d p
    for d in "${POSTFIXES[@]}"; do
        for p in $(postfix_env_pids "$d"); do kill -KILL "$p" 2>/dev/null || true; done
    done
}

# postfix_instance DIR LISTEN_ADDR:PORT EXTRA_MASTER_CF : writes DIR/etc/{main,master}.cf
# (common part; the caller appends its own main.cf settings)
postfix_instance() {
    local base=$1 listen=$2 extra=$3
    mkdir -p "$base/etc" "$base/queue" "$base/data"
    chmod 755 "$base" "$base/etc" "$base/queue" "$base/data"
    chown postfix:postfix "$base/data"
    cat >"$base/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $base/queue
data_directory = $base/data
maillog_file = $base/maillog
maillog_file_prefixes = $T
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
alias_maps =
alias_database =
local_recipient_maps =
message_size_limit = 10240000
EOF
    cat >"$base/etc/master.cf" <<EOF
$listen   inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
$extra
EOF
}

# postfix_start BASE ADDR PORT : starts the instance in BASE, waits for ADDR:PORT
postfix_start() {
    local out
    POSTFIXES+=("$1/etc")
    script -qc "postfix -c $1/etc set-permissions" /dev/null >/dev/null 2>&1 || true
    out=$(timeout 60 script -qc "postfix -c $1/etc start" /dev/null 2>&1) \
        || die "postfix -c $1/etc start failed: $out $(tail -5 "$1/maillog" 2>/dev/null)"
    wait_port "$2" "$3"
}
