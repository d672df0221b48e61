#!/usr/bin/env bash
# Benchmark `blackpony inbound` against direct delivery and peer front
# proxies (haproxy, nginx's mail proxy, stunnel). Run as root:
#
#   bench/inbound.sh            (or: sudo bench/inbound.sh)
#
# Everything runs on 127.0.0.1 with ports chosen at run time; every process
# started here is stopped on exit. See bench/README.md for what the numbers
# mean. Knobs (environment): BLACKPONY=path (default target/release/blackpony,
# built if missing), REPS (3), PLAIN_MSGS ("4000 20000 60000"), TLS_MSGS (4000),
# PERCONN_MSGS (600), IDLE_CONNS (2000), TLS_IDLE_CONNS (5000), SESSIONS (20), SIZE (1024),
# CERT_KEY (ec256|rsa2048, default ec256), KEEP=1 keeps the temp dir (logs),
# SECTIONS (default all: "plain tls-kept tls-perconn memory memory-tls"; a
# subset runs only those sections and reports only their rows and aims;
# "plain" includes the floor relays bench/floor.c and bench/floor_uring.c,
# "tls-kept" and "tls-perconn" the STARTTLS floor bench/floor_tls.c),
# OTHER=path: a second blackpony build, run beside the first in the STARTTLS
# sections (rows "other build"), to compare two builds within one run.
# Raises the open-file limit to 65536 (or the hard limit, if lower).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
REPS=${REPS:-3}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
PLAIN_MSGS=${PLAIN_MSGS:-4000 20000 60000}
read -ra PLAIN_RUNS <<<"$PLAIN_MSGS"
TLS_MSGS=${TLS_MSGS:-4000}
PERCONN_MSGS=${PERCONN_MSGS:-600}
IDLE_CONNS=${IDLE_CONNS:-2000}
TLS_IDLE_CONNS=${TLS_IDLE_CONNS:-5000}
CERT_KEY=${CERT_KEY:-ec256}
BLACKPONY=${BLACKPONY:-$ROOT/target/release/blackpony}
OTHER=${OTHER:-}
NGINX_MAIL_MODULE=/usr/lib/nginx/modules/ngx_mail_module.so
ALL_SECTIONS="plain tls-kept tls-perconn memory memory-tls"
SECTIONS=${SECTIONS:-$ALL_SECTIONS}

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# want SECTION : whether SECTION is to be run (and reported)
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
for s in $SECTIONS; do
    [[ " $ALL_SECTIONS " == *" $s "* ]] || die "unknown section '$s' in SECTIONS (known: $ALL_SECTIONS)"
done

[ "$(id -u)" = 0 ] || die "run as root (smtp-sink needs it; so does ulimit -n 65536): sudo $0"

# ------------------------------------------------------------------ tools
need_pkgs=()
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null || need_pkgs+=(postfix)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
[ -e "$NGINX_MAIL_MODULE" ] || need_pkgs+=(libnginx-mod-mail)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_pkgs+=(stunnel4)
command -v openssl >/dev/null || need_pkgs+=(openssl)
[ -x /usr/bin/python3 ] || need_pkgs+=(python3)
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
[ -e /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
[ -e /usr/include/liburing.h ] || need_pkgs+=(liburing-dev)
command -v pgrep >/dev/null || need_pkgs+=(procps)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

if [ ! -x "$BLACKPONY" ]; then
    say "building blackpony (cargo build --release)"
    (cd "$ROOT" && cargo build --release) >&2
fi

# ------------------------------------------------------------------ setup
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"   # a container may cap the hard limit
NOFILE=$(ulimit -n)
BIGGEST=$(( IDLE_CONNS > TLS_IDLE_CONNS ? IDLE_CONNS : TLS_IDLE_CONNS ))
[ "$NOFILE" -ge $((3 * BIGGEST + 1000)) ] || die "open-file limit $NOFILE is too low for $BIGGEST idle connections"
MAXCONN=$((BIGGEST + 1000))
T=$(mktemp -d /tmp/blackpony-bench.XXXXXX)
chmod 755 "$T"
BLACKPONY=$(realpath "$BLACKPONY")
[ -z "$OTHER" ] || OTHER=$(realpath "$OTHER")
cd "$T"

trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY=$(cpu_busy)
[ "$BUSY" -gt 15 ] && say "WARNING: the machine was ${BUSY}% busy before the benchmark started; numbers will be noisy"
say "building the load generator (bench/smtpload.c)"
cc -O2 -o "$T/smtpload" "$HERE/smtpload.c" -lssl -lcrypto
LOAD=$T/smtpload
# The floors of the plaintext section: minimal C relays that move every
# byte and do nothing else (epoll, and io_uring batching the calls)
say "building the floor relays (bench/floor.c, bench/floor_uring.c)"
cc -O2 -pthread -o "$T/floor" "$HERE/floor.c"
cc -O2 -o "$T/floor_uring" "$HERE/floor_uring.c" -luring
# ... and of the STARTTLS sections: a minimal C + OpenSSL sidecar that answers
# STARTTLS itself and relays everything else (bench/floor_tls.c)
say "building the STARTTLS floor (bench/floor_tls.c)"
cc -O2 -pthread -o "$T/floor_tls" "$HERE/floor_tls.c" -lssl -lcrypto

case $CERT_KEY in
    ec256) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa2048) keyopt=(-newkey rsa:2048) ;;
    *) die "CERT_KEY must be ec256 or rsa2048" ;;
esac
openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=bench.test \
    -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
chmod 644 "$T/key.pem"

read -r SINK BP BPN HAP NGX NGXTLS NGXAUTH STN \
        MSINK MBP MHAP MNGX MNGXAUTH TBP TNGX TNGXTLS TNGXAUTH BPO FLR FLR2 FLRU FLT FLT2 <<<"$("$PY" "$HERE/smtpbench.py" ports 23)"

# One sink for all throughput runs; -c prints running counters (sessions,
# QUITs, messages) that tell whether every message arrived.
start sink smtp-sink -u postfix -c -m 5000 "127.0.0.1:$SINK" 4096

start blackpony "$BLACKPONY" inbound --listen "127.0.0.1:$BP" --backend "127.0.0.1:$SINK" \
    --identity none --hostname bench.test --tls-cert "$T/cert.pem" --tls-key "$T/key.pem"
# the same without the Received: header, to show what the header costs
start blackpony_nth "$BLACKPONY" inbound --listen "127.0.0.1:$BPN" --backend "127.0.0.1:$SINK" \
    --identity none --hostname bench.test --tls-cert "$T/cert.pem" --tls-key "$T/key.pem" \
    --no-trace-header
if [ -n "$OTHER" ]; then
    start blackpony_other "$OTHER" inbound --listen "127.0.0.1:$BPO" --backend "127.0.0.1:$SINK" \
        --identity none --hostname bench.test --tls-cert "$T/cert.pem" --tls-key "$T/key.pem"
fi

haproxy_conf "$T/haproxy.cfg" "$HAP" "$SINK"
start haproxy haproxy -db -q -f "$T/haproxy.cfg"
start floor "$T/floor" "$FLR" "$SINK"
start floor2 "$T/floor" "$FLR2" "$SINK" 2
start floor_uring "$T/floor_uring" "$FLRU" "$SINK"
start floor_tls "$T/floor_tls" "$FLT" "$SINK" "$T/cert.pem" "$T/key.pem"
start floor_tls2 "$T/floor_tls" "$FLT2" "$SINK" "$T/cert.pem" "$T/key.pem" 2

nginx_conf() { # DIR SMTP_PORT STARTTLS_PORT(or "") AUTH_PORT SINK_PORT
    mkdir -p "$1/tmp"
    local tls_server=""
    [ -n "$3" ] && tls_server="
    server {
        listen 127.0.0.1:$3;
        protocol smtp;
        starttls on;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
    }"
    cat >"$1/nginx.conf" <<EOF
load_module $NGINX_MAIL_MODULE;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $1/nginx.pid;
daemon off;
error_log $1/error.log warn;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    client_body_temp_path $1/tmp;
    proxy_temp_path $1/tmp;
    fastcgi_temp_path $1/tmp;
    uwsgi_temp_path $1/tmp;
    scgi_temp_path $1/tmp;
    server {
        listen 127.0.0.1:$4;
        location / {
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port $5;
            return 204;
        }
    }
}
mail {
    server_name bench.test;
    auth_http 127.0.0.1:$4/auth;
    xclient off;
    smtp_auth none;
    timeout 300s;    # as blackpony's client timeout (nginx's default, 60 s, cut the idle-memory clients)
    proxy_pass_error_message on;
    smtp_capabilities "SIZE 10240000" 8BITMIME ENHANCEDSTATUSCODES;
    server {
        listen 127.0.0.1:$2;
        protocol smtp;
    }$tls_server
}
EOF
}
mkdir -p "$T/nginx" "$T/mnginx"
nginx_conf "$T/nginx" "$NGX" "$NGXTLS" "$NGXAUTH" "$SINK"
start nginx nginx -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf"

cat >"$T/stunnel.conf" <<EOF
foreground = yes
pid =
debug = err
output = $T/stunnel-debug.log
[smtp]
client = no
accept = 127.0.0.1:$STN
connect = 127.0.0.1:$SINK
protocol = smtp
cert = $T/cert.pem
key = $T/key.pem
EOF
start stunnel "$STUNNEL" "$T/stunnel.conf"

for p in "$SINK" "$BP" "$BPN" "$HAP" "$NGX" "$NGXTLS" "$STN" "$FLR" "$FLR2" "$FLRU" "$FLT" "$FLT2" ${OTHER:+"$BPO"}; do wait_port 127.0.0.1 "$p"; done
sleep 0.3
# nginx: the worker processes do the work (the master only supervises)
# shellcheck disable=SC2154
NGX_PIDS=$(pgrep -P "$PID_nginx" | paste -sd, -)
[ -n "$NGX_PIDS" ] || die "no nginx worker processes found"

# ------------------------------------------------------------------ helpers
sink_count() { # messages smtp-sink has received so far
    tail -c 300 "$T/sink.log" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1
}
# sink_settle : wait until the sink's counter stops moving (2 s at most)
sink_settle() {
    local a b
    a=$(sink_count)
    for _ in $(seq 20); do
        sleep 0.1
        b=$(sink_count)
        [ "$a" = "$b" ] && break
        a=$b
    done
    echo "${a:-0}"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
jget() { "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); print(d.get(sys.argv[1], ""))' "$1"; }

declare -A RATES GENCPU SRVCPU SYSPCT LOST ERRS TLSINFO
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID[,PID...] : user+system CPU so far (dead threads included)
cpu_ticks() {
    local p t=0
    for p in ${1//,/ }; do
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo $t
}
# sys_ticks PID[,PID...] : system CPU so far (the kernel's work inside the calls)
sys_ticks() {
    local p t=0
    for p in ${1//,/ }; do
        t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $13}')))
    done
    echo $t
}
# us_per_msg TICKS MSGS
us_per_msg() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN {printf "%.0f", (n > 0) ? t * 1e6 / hz / n : 0}'; }
FAILURES=()

# record KEY RATE SENT_BY_CLIENT RECEIVED_BY_SINK CLIENT_ERRORS SERVER_US_PER_MSG [GEN_CPU]
record() {
    local key=$1 rate=$2 sent=$3 got=$4 errs=$5
    RATES[$key]="${RATES[$key]:-} $rate"
    SRVCPU[$key]="${SRVCPU[$key]:-} $6"
    [ -n "${7:-}" ] && GENCPU[$key]="${GENCPU[$key]:-} $7"
    LOST[$key]=$(( ${LOST[$key]:-0} + sent - got ))
    ERRS[$key]=$(( ${ERRS[$key]:-0} + errs ))
}

# run_source KEY PORT PIDS MSGS : one smtp-source run, wall time around the
# command; PIDS = the server processes whose CPU time is counted
run_source() {
    local key=$1 port=$2 pids=$3 msgs=$4 before after t0 t1 rc=0 rate c0 c1 s0 s1 us
    before=$(sink_settle)
    c0=$(cpu_ticks "$pids")
    s0=$(sys_ticks "$pids")
    t0=$EPOCHREALTIME
    timeout 300 smtp-source -d -s "$SESSIONS" -m "$msgs" -l "$SIZE" \
        -f a@client.test -t b@sink.test "127.0.0.1:$port" >"$T/source.out" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    c1=$(cpu_ticks "$pids")
    s1=$(sys_ticks "$pids")
    after=$(sink_settle)
    us=$(us_per_msg $((c1 - c0)) "$msgs")
    SYSPCT[$key]="${SYSPCT[$key]:-} $(( c1 > c0 ? 100 * (s1 - s0) / (c1 - c0) : 0 ))"
    rate=$(awk -v n="$msgs" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
    if [ $rc != 0 ]; then
        FAILURES+=("$key: smtp-source exit $rc: $(head -c 300 "$T/source.out")")
        rate=0
    fi
    record "$key" "$rate" "$msgs" $((after - before)) $((rc != 0)) "$us"
    say "  $key: $rate msgs/s (sink got $((after - before)) of $msgs; server cpu $us us/msg, $(( c1 > c0 ? 100 * (s1 - s0) / (c1 - c0) : 0 ))% of it system)"
}

# run_load KEY PORT PIDS MSGS ARGS... : one smtpload run
run_load() {
    local key=$1 port=$2 pids=$3 msgs=$4; shift 4
    local before after out rc=0 rate ok errs c0 c1 s0 s1 us
    before=$(sink_settle)
    c0=$(cpu_ticks "$pids")
    s0=$(sys_ticks "$pids")
    out=$("$LOAD" -a "127.0.0.1:$port" -s "$SESSIONS" -m "$msgs" -l "$SIZE" -t 120 "$@") || rc=$?
    c1=$(cpu_ticks "$pids")
    s1=$(sys_ticks "$pids")
    after=$(sink_settle)
    us=$(us_per_msg $((c1 - c0)) "$msgs")
    SYSPCT[$key]="${SYSPCT[$key]:-} $(( c1 > c0 ? 100 * (s1 - s0) / (c1 - c0) : 0 ))"
    rate=$(jget rate <<<"$out"); ok=$(jget ok <<<"$out"); errs=$(jget errors <<<"$out")
    [ -n "$rate" ] || { rate=0; ok=0; errs=1; }
    if [ $rc != 0 ]; then
        FAILURES+=("$key: smtpload exit $rc, $ok/$msgs accepted: $(jget first_error <<<"$out")")
    fi
    TLSINFO[$key]=$(jget tls <<<"$out")
    record "$key" "$rate" "$msgs" $((after - before)) "${errs:-0}" "$us" "$(jget gen_cpu <<<"$out")"
    say "  $key: $rate msgs/s (sink got $((after - before)) of $msgs, client accepted $ok; server cpu $us us/msg, generator cpu $(jget gen_cpu <<<"$out") s)"
}

# between rounds: how busy is the machine while the benchmark itself rests?
BG_BUSY=()
bg_check() { BG_BUSY+=("$(cpu_busy 0.5)"); }

# ------------------------------------------------------------------ 1. plaintext, smtp-source
# One block per message count (the aim holds at each); the header cost
# (--no-trace-header) is shown at the first count only.
want plain || PLAIN_RUNS=()
for m in "${PLAIN_RUNS[@]}"; do
    say "1. plaintext, smtp-source -d -s $SESSIONS -m $m -l $SIZE ($REPS rounds)"
    for r in $(seq "$REPS"); do
        bg_check
        run_source "direct@$m" "$SINK" "$PID_sink" "$m"
        run_source "blackpony@$m" "$BP" "$PID_blackpony" "$m"
        if [ "$m" = "${PLAIN_RUNS[0]}" ]; then
            # shellcheck disable=SC2154
            run_source "blackpony_nth@$m" "$BPN" "$PID_blackpony_nth" "$m"
        fi
        run_source "haproxy@$m" "$HAP" "$PID_haproxy" "$m"
        run_source "nginx@$m" "$NGX" "$NGX_PIDS" "$m"
        # shellcheck disable=SC2154
        run_source "floor@$m" "$FLR" "$PID_floor" "$m"
        # shellcheck disable=SC2154
        run_source "floor2@$m" "$FLR2" "$PID_floor2" "$m"
        # shellcheck disable=SC2154
        run_source "floor_uring@$m" "$FLRU" "$PID_floor_uring" "$m"
    done
done

# ------------------------------------------------------------------ 2. STARTTLS, smtpload
want tls-kept && say "2a. STARTTLS, smtpload: $SESSIONS sessions, $TLS_MSGS messages, kept sessions ($REPS rounds)"
want tls-kept && for r in $(seq "$REPS"); do
    bg_check
    run_load gen_plain "$SINK" "$PID_sink" "$TLS_MSGS"
    run_load gen_plain_bp "$BP" "$PID_blackpony" "$TLS_MSGS"
    run_load tls_bp "$BP" "$PID_blackpony" "$TLS_MSGS" -T
    # shellcheck disable=SC2154
    [ -z "$OTHER" ] || run_load tls_other "$BPO" "$PID_blackpony_other" "$TLS_MSGS" -T
    run_load tls_nginx "$NGXTLS" "$NGX_PIDS" "$TLS_MSGS" -T
    run_load tls_stunnel "$STN" "$PID_stunnel" "$TLS_MSGS" -T
    # shellcheck disable=SC2154
    run_load tls_floor "$FLT" "$PID_floor_tls" "$TLS_MSGS" -T
    # shellcheck disable=SC2154
    run_load tls_floor2 "$FLT2" "$PID_floor_tls2" "$TLS_MSGS" -T
done
want tls-perconn && say "2b. STARTTLS, smtpload: $SESSIONS sessions, $PERCONN_MSGS messages, one per connection ($REPS rounds)"
want tls-perconn && for r in $(seq "$REPS"); do
    bg_check
    run_load pc_plain "$SINK" "$PID_sink" "$PERCONN_MSGS" -1
    run_load pc_bp "$BP" "$PID_blackpony" "$PERCONN_MSGS" -1 -T
    [ -z "$OTHER" ] || run_load pc_other "$BPO" "$PID_blackpony_other" "$PERCONN_MSGS" -1 -T
    run_load pc_nginx "$NGXTLS" "$NGX_PIDS" "$PERCONN_MSGS" -1 -T
    run_load pc_stunnel "$STN" "$PID_stunnel" "$PERCONN_MSGS" -1 -T
    run_load pc_floor "$FLT" "$PID_floor_tls" "$PERCONN_MSGS" -1 -T
    run_load pc_floor2 "$FLT2" "$PID_floor_tls2" "$PERCONN_MSGS" -1 -T
done

# ------------------------------------------------------------------ 3. memory per idle connection
# Fresh instances (their own sink), so that memory freed by earlier runs
# does not hide what idle connections cost.
declare -A MEM
if want memory || want memory-tls; then
start msink smtp-sink -u postfix -m $MAXCONN "127.0.0.1:$MSINK" 4096
MBP_LIMITS=(--max-connections $MAXCONN --max-connections-per-client $MAXCONN
    --max-connections-per-network $MAXCONN)
start mblackpony "$BLACKPONY" inbound --listen "127.0.0.1:$MBP" --backend "127.0.0.1:$MSINK" \
    --identity none --hostname bench.test --tls-cert "$T/cert.pem" --tls-key "$T/key.pem" \
    "${MBP_LIMITS[@]}"
# after STARTTLS: fresh instances again (memory freed by the first test
# would otherwise be reused and hide the cost)
# (above 80% of the slots in use, stress would cut the silent ones after
# --stress-client-timeout, 10 s, while the others are still connecting)
start tblackpony "$BLACKPONY" inbound --listen "127.0.0.1:$TBP" --backend "127.0.0.1:$MSINK" \
    --identity none --hostname bench.test --tls-cert "$T/cert.pem" --tls-key "$T/key.pem" \
    "${MBP_LIMITS[@]}" --stress-client-timeout 300
haproxy_conf "$T/mhaproxy.cfg" "$MHAP" "$MSINK"
start mhaproxy haproxy -db -q -f "$T/mhaproxy.cfg"
mkdir -p "$T/mnginx"
nginx_conf "$T/mnginx" "$MNGX" "" "$MNGXAUTH" "$MSINK"
start mnginx nginx -p "$T/mnginx" -e "$T/mnginx/error.log" -c "$T/mnginx/nginx.conf"
mkdir -p "$T/tnginx"
nginx_conf "$T/tnginx" "$TNGX" "$TNGXTLS" "$TNGXAUTH" "$MSINK"
start tnginx nginx -p "$T/tnginx" -e "$T/tnginx/error.log" -c "$T/tnginx/nginx.conf"
for p in "$MSINK" "$MBP" "$MHAP" "$MNGX" "$TBP" "$TNGXTLS"; do wait_port 127.0.0.1 "$p"; done
sleep 0.5
# shellcheck disable=SC2154
NGX_WORKERS=$(pgrep -P "$PID_mnginx" | paste -sd, -)
[ -n "$NGX_WORKERS" ] || die "no nginx worker processes found"
# shellcheck disable=SC2154
TNGX_WORKERS=$(pgrep -P "$PID_tnginx" | paste -sd, -)
[ -n "$TNGX_WORKERS" ] || die "no nginx worker processes found"

run_idle() { # KEY PORT PIDS [N --starttls]
    local out rc=0
    out=$("$PY" "$HERE/smtpbench.py" idle --addr "127.0.0.1:$2" --n "${4:-$IDLE_CONNS}" --pids "$3" \
        --timeout 900 ${5:-}) || rc=$?
    MEM[$1]=$out
    if [ $rc != 0 ]; then FAILURES+=("memory $1: $out"); fi
    say "  $1: $out"
}
if want memory; then
    say "3. memory: $IDLE_CONNS idle connections (greeting read, then silence)"
    # shellcheck disable=SC2154
    run_idle blackpony "$MBP" "$PID_mblackpony"
    sleep 0.5
    # shellcheck disable=SC2154
    run_idle haproxy "$MHAP" "$PID_mhaproxy"
    sleep 0.5
    run_idle nginx "$MNGX" "$NGX_WORKERS"
fi
if want memory-tls; then
    say "3b. memory: $TLS_IDLE_CONNS idle connections after STARTTLS (EHLO, STARTTLS, handshake, EHLO, then silence)"
    sleep 0.5
    # shellcheck disable=SC2154
    run_idle tls_blackpony "$TBP" "$PID_tblackpony" "$TLS_IDLE_CONNS" --starttls
    sleep 0.5
    run_idle tls_nginx "$TNGXTLS" "$TNGX_WORKERS" "$TLS_IDLE_CONNS" --starttls
fi
fi

# ------------------------------------------------------------------ report
# Did blackpony log anything that is not a normal session line?
BP_ODD=$(grep -v -E ' (connect|disconnect|starttls) client=| shutdown: | limits: |listening|started|certificate' \
    "$T/blackpony.log" "$T/blackpony_nth.log" "$T/blackpony_other.log" "$T/mblackpony.log" "$T/tblackpony.log" 2>/dev/null | head -5 || true)

med() { median <<<"${RATES[$1]:-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
row() { # LABEL KEY BASEKEY
    local m b
    m=$(med "$2"); b=$(med "$3")
    local sys
    sys=$(median <<<"${SYSPCT[$2]:-}"); [ "$sys" = nan ] && sys=-
    printf '%-52s %8.0f   %5s   %8s %5s   %5s %4s\n' "$1" "$m" "$(ratio "$m" "$b")" \
        "$(median <<<"${SRVCPU[$2]:-}")" "$sys" "${LOST[$2]:-0}" "${ERRS[$2]:-0}"
}
head_row() { printf '%-52s %8s   %5s   %8s %5s   %5s %4s\n' "$1" "msgs/s" "ratio" "cpu us/m" "sys%" "lost" "err"; }
memrow() { # KEY LABEL [N]
    local o=${MEM[$1]:-}
    printf '%-36s %9s %9s %10s %7s/%s\n' "$2" \
        "$(jget rss_before_kib <<<"$o")" "$(jget rss_after_kib <<<"$o")" \
        "$(jget kib_per_conn <<<"$o")" "$(jget alive <<<"$o")" "${3:-$IDLE_CONNS}"
}

{
echo
echo "blackpony inbound benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
echo "blackpony: $BLACKPONY (built $(date -u -r "$BLACKPONY" +%Y-%m-%dT%H:%MZ); $(repo_head))"
[ -z "$OTHER" ] || echo "other build: $OTHER (built $(date -u -r "$OTHER" +%Y-%m-%dT%H:%MZ))"
echo "peers: $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy", $3}'), $(nginx -v 2>&1 | sed 's/.*: //'), $("$STUNNEL" -version 2>&1 | grep -m1 -o 'stunnel [0-9.]*'), $(openssl version | awk '{print $1, $2}')"
echo "sections: $SECTIONS"
echo "msgs/s and cpu: medians of $REPS runs. cpu us/m = CPU time (user+system) of the server under test per message:"
echo "  smtp-sink for 'direct' and reference rows, else the proxy alone (nginx: its workers). lost = messages sent minus"
echo "  messages smtp-sink counted, summed over all runs; err = errors the client saw, summed over all runs;"
echo "  sys% = the system (kernel) share of that CPU: the loopback TCP work inside the calls"
BG_MAX=$(printf '%s\n' "$BUSY" "${BG_BUSY[@]}" | sort -n | tail -1)
echo "other load: ${BUSY}% CPU busy at the start; between rounds (benchmark idle): ${BG_BUSY[*]/%/%}"
echo "load average (1, 5, 15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
[ "$BG_MAX" -gt 15 ] && echo "WARNING: something else used up to ${BG_MAX}% of the CPU during the run; the figures are noisy"
echo
for m in "${PLAIN_RUNS[@]}"; do
    head_row "1. plaintext, smtp-source -d -s $SESSIONS -m $m -l $SIZE"
    row "direct to smtp-sink" "direct@$m" "direct@$m"
    row "blackpony inbound (identity none, trace header)" "blackpony@$m" "direct@$m"
    if [ "$m" = "${PLAIN_RUNS[0]}" ]; then
        row "blackpony inbound --no-trace-header" "blackpony_nth@$m" "direct@$m"
    fi
    row "haproxy (mode tcp)" "haproxy@$m" "direct@$m"
    row "nginx mail proxy (smtp_auth none, xclient off)" "nginx@$m" "direct@$m"
    row "floor: bench/floor.c (epoll, recv+send, nothing else)" "floor@$m" "direct@$m"
    row "floor: bench/floor.c, 2 threads (SO_REUSEPORT)" "floor2@$m" "direct@$m"
    row "floor: bench/floor_uring.c (io_uring, batched calls)" "floor_uring@$m" "direct@$m"
    echo
done
if [ ${#PLAIN_RUNS[@]} -gt 0 ]; then
    echo "    floor rows: minimal C relays (no parsing, no timers, no logs) that read and write every byte as the"
    echo "    proxies do, 8 recv + 8 send per message with epoll (one thread, or two as haproxy's and nginx's two workers);"
    echo "    the io_uring one (one thread) queues each send with the next recv and submits them in one call. The epoll"
    echo "    rows' CPU per message is what any relay making the proxies' calls pays; io_uring shows what batching saves"
    echo
fi
if want tls-kept; then
head_row "2a. STARTTLS, smtpload -s $SESSIONS -m $TLS_MSGS -l $SIZE -T"
echo "    kept sessions: one STARTTLS, then $((TLS_MSGS / SESSIONS)) messages each; ratio vs nginx"
row "blackpony inbound (its own STARTTLS)" tls_bp tls_nginx
[ -z "$OTHER" ] || row "other build (OTHER)" tls_other tls_nginx
row "nginx mail proxy (starttls on)" tls_nginx tls_nginx
row "stunnel (protocol = smtp)" tls_stunnel tls_nginx
row "floor: bench/floor_tls.c (C+OpenSSL, epoll, 1 thread)" tls_floor tls_nginx
row "floor: bench/floor_tls.c, 2 threads (SO_REUSEPORT)" tls_floor2 tls_nginx
row "reference: smtpload plaintext direct to smtp-sink" gen_plain tls_nginx
row "reference: smtpload plaintext via blackpony" gen_plain_bp tls_nginx
echo
fi
if want tls-perconn; then
head_row "2b. STARTTLS, smtpload -s $SESSIONS -m $PERCONN_MSGS -l $SIZE -T -1"
echo "    one message per connection (full TLS handshake each); ratio vs nginx"
row "blackpony inbound" pc_bp pc_nginx
[ -z "$OTHER" ] || row "other build (OTHER)" pc_other pc_nginx
row "nginx mail proxy" pc_nginx pc_nginx
row "stunnel" pc_stunnel pc_nginx
row "floor: bench/floor_tls.c (C+OpenSSL, epoll, 1 thread)" pc_floor pc_nginx
row "floor: bench/floor_tls.c, 2 threads (SO_REUSEPORT)" pc_floor2 pc_nginx
row "reference: plaintext (no -T) direct to smtp-sink" pc_plain pc_nginx
echo
fi
if want tls-kept || want tls-perconn; then
echo "    TLS negotiated: blackpony $(echo "${TLSINFO[tls_bp]:-${TLSINFO[pc_bp]:-?}}"), nginx $(echo "${TLSINFO[tls_nginx]:-${TLSINFO[pc_nginx]:-?}}"), stunnel $(echo "${TLSINFO[tls_stunnel]:-${TLSINFO[pc_stunnel]:-?}}"), floor $(echo "${TLSINFO[tls_floor]:-${TLSINFO[pc_floor]:-?}}"); certificate $CERT_KEY, same for all"
echo "    floor rows: a minimal STARTTLS sidecar (no parsing beyond spotting EHLO and STARTTLS, no timers, no logs, no"
echo "    session tickets), one thread or two (as nginx's two workers and blackpony's two serving threads); the backend"
echo "    keeps its connection and sees the second EHLO. What any relay that terminates STARTTLS and passes every byte pays here"
printf '    generator CPU seconds per run (median): %s\n' "$(for k in gen_plain tls_bp tls_nginx tls_stunnel tls_floor tls_floor2 pc_bp pc_nginx pc_stunnel pc_floor pc_floor2; do printf '%s %s  ' "$k" "$(median <<<"${GENCPU[$k]:-}")"; done)"
echo
fi
if want memory; then
printf '%-36s %9s %9s %10s %9s\n' "3. memory, $IDLE_CONNS idle connections" "RSS KiB" "after" "KiB/conn" "alive"
memrow blackpony "blackpony inbound (1 process)"
memrow haproxy "haproxy (1 process)"
memrow nginx "nginx mail proxy (sum of 2 workers)"
echo "    blackpony and haproxy hold a backend connection per client; nginx's mail proxy connects to the backend only at MAIL FROM"
fi
if want memory-tls; then
printf '%-36s %9s %9s %10s %9s\n' "3b. memory, $TLS_IDLE_CONNS after STARTTLS" "RSS KiB" "after" "KiB/conn" "alive"
memrow tls_blackpony "blackpony inbound (1 process)" "$TLS_IDLE_CONNS"
memrow tls_nginx "nginx mail proxy (sum of 2 workers)" "$TLS_IDLE_CONNS"
echo
fi

# The inbound rows of issue 13, each against its aim, from the figures above.
aim() { # LABEL VALUE AIM-TEXT OK(0/1)
    printf '  %-62s %8s   %-9s %s\n' "$1" "$2" "$3" "$([ "$4" = 1 ] && echo met || echo 'NOT met')"
}
cmp_ok() { awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { if (a == "-" || a == "" || a == "nan") { print 0; exit } if (op == ">=") print (a >= b) ? 1 : 0; else print (a <= b) ? 1 : 0 }'; }
echo "issue 13, inbound rows (value, aim):"
for m in "${PLAIN_RUNS[@]}"; do
    bp=$(med "blackpony@$m"); hp=$(med "haproxy@$m"); ng=$(med "nginx@$m")
    best=$(awk -v a="$hp" -v b="$ng" 'BEGIN {print (a > b) ? a : b}')
    r=$(ratio "$bp" "$best")
    aim "plaintext, $m msgs: blackpony / best peer, msgs/s" "$r" ">= 1.10" "$(cmp_ok "$r" ">=" 1.10)"
done
for m in "${PLAIN_RUNS[@]}"; do
    bpc=$(median <<<"${SRVCPU[blackpony@$m]:-}"); hpc=$(median <<<"${SRVCPU[haproxy@$m]:-}")
    r=$(ratio "$bpc" "$hpc")
    aim "CPU per message, $m msgs: blackpony / haproxy ($bpc / $hpc us)" "$r" "<= 0.70" "$(cmp_ok "$r" "<=" 0.70)"
done
for m in "${PLAIN_RUNS[@]}"; do
    # the floors, for reading the two rows above (no aim of their own)
    hpc=$(median <<<"${SRVCPU[haproxy@$m]:-}"); bpc=$(median <<<"${SRVCPU[blackpony@$m]:-}")
    flc=$(median <<<"${SRVCPU[floor@$m]:-}"); fuc=$(median <<<"${SRVCPU[floor_uring@$m]:-}")
    f2c=$(median <<<"${SRVCPU[floor2@$m]:-}")
    printf '  %-62s %8s\n' "floor, $m msgs: epoll floor / haproxy CPU ($flc / $hpc us)" "$(ratio "$flc" "$hpc")" \
        "floor, $m msgs: 2-thread floor / haproxy CPU ($f2c / $hpc us)" "$(ratio "$f2c" "$hpc")" \
        "floor, $m msgs: io_uring floor / haproxy CPU ($fuc / $hpc us)" "$(ratio "$fuc" "$hpc")" \
        "floor, $m msgs: blackpony / epoll floor CPU ($bpc / $flc us)" "$(ratio "$bpc" "$flc")" \
        "floor, $m msgs: 2-thread epoll floor / best peer, msgs/s" "$(ratio "$(med "floor2@$m")" "$(awk -v a="$(med "haproxy@$m")" -v b="$(med "nginx@$m")" 'BEGIN {print (a > b) ? a : b}')")"
done
if want tls-kept; then
    r=$(ratio "$(med tls_bp)" "$(med tls_nginx)")
    aim "STARTTLS, kept sessions: blackpony / nginx" "$r" ">= 1.20" "$(cmp_ok "$r" ">=" 1.20)"
fi
if want tls-perconn; then
    r=$(ratio "$(med pc_bp)" "$(med pc_nginx)")
    aim "STARTTLS, one message per connection: blackpony / nginx" "$r" ">= 2.00" "$(cmp_ok "$r" ">=" 2.00)"
fi
for k in tls:kept pc:perconn; do
    # the STARTTLS floor, for reading the two rows above (no aim of its own)
    want "tls-${k#*:}" || continue
    p=${k%%:*}
    [ "$p" = tls ] && what="kept sessions" || what="one per connection"
    flc=$(median <<<"${SRVCPU[${p}_floor]:-}"); ngc=$(median <<<"${SRVCPU[${p}_nginx]:-}"); bpc=$(median <<<"${SRVCPU[${p}_bp]:-}")
    f2c=$(median <<<"${SRVCPU[${p}_floor2]:-}")
    printf '  %-62s %8s\n' "STARTTLS floor, $what: floor / nginx, msgs/s" "$(ratio "$(med "${p}_floor")" "$(med "${p}_nginx")")" \
        "STARTTLS floor, $what: 2-thread floor / nginx, msgs/s" "$(ratio "$(med "${p}_floor2")" "$(med "${p}_nginx")")" \
        "STARTTLS floor, $what: blackpony / floor, msgs/s" "$(ratio "$(med "${p}_bp")" "$(med "${p}_floor")")" \
        "STARTTLS floor, $what: floor / nginx CPU ($flc / $ngc us)" "$(ratio "$flc" "$ngc")" \
        "STARTTLS floor, $what: 2-thread floor / nginx CPU ($f2c / $ngc us)" "$(ratio "$f2c" "$ngc")" \
        "STARTTLS floor, $what: blackpony / floor CPU ($bpc / $flc us)" "$(ratio "$bpc" "$flc")"
done
if want memory; then
    k=$(jget kib_per_conn <<<"${MEM[blackpony]:-}")
    aim "RSS per idle plain connection, KiB ($IDLE_CONNS connections)" "$k" "<= 4" "$(cmp_ok "$k" "<=" 4)"
fi
if want memory-tls; then
    k=$(jget kib_per_conn <<<"${MEM[tls_blackpony]:-}")
    aim "RSS per connection after STARTTLS, KiB ($TLS_IDLE_CONNS connections)" "$k" "<= 32" "$(cmp_ok "$k" "<=" 32)"
fi
echo
if [ ${#FAILURES[@]} -gt 0 ]; then
    echo "FAILURES:"
    printf '  %s\n' "${FAILURES[@]}"
else
    echo "no failures: every run exited 0 and smtp-sink counted every message"
fi
if [ -n "$BP_ODD" ]; then
    echo "blackpony logged (first lines that are not session records):"
    printf '%s\n' "$BP_ODD" | sed 's/^/  /'
fi
}
