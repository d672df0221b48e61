#!/usr/bin/env bash
# Hostile load against `blackpony inbound`, haproxy and nginx's mail proxy in
# front of the same backend, in one run on loopback. Run as root:
#
#   bench/hostile.sh            (or: sudo bench/hostile.sh)
#
# For each server: a normal client's 200 messages (one connection each, one
# after another, from 127.0.0.1) alone (its baseline), then again under
# each attack: a slowloris (1,000 tricklers from 200 addresses 127.1.k.1,
# one /24 each, one byte every 10 s, connecting again 0.5 s after being
# cut), a burst of 5,000 connections, and 200 clients sending random bytes.
# Prints, per attack, the normal client's served/attempted count, msg/s,
# p50/p99 latency and their ratio to its own baseline, the server's RSS,
# the log volume, and the verdict on issue 8's aim (under the slowloris at
# least 95% served, p99 within 2x the baseline). Bounded: each message
# gets TIMEOUT s, the client BUDGET s, every attack stops after its client
# run; about 5 minutes for the three servers.
# Knobs (environment): BLACKPONY=path (default target/release/blackpony),
# MSGS (200), TRICKLERS (1000), ADDRS (200), EVERY (10), BURST (5000),
# JUNK (200), MAXCONN (1000), RAMP (15 s for the tricklers to connect and
# their first generation to be cut), TIMEOUT (2), BUDGET (30), ATTACKS
# ("slowloris burst junk"), SERVERS ("blackpony haproxy nginx"), BP_ARGS
# (more blackpony flags), BACKEND_SLOTS (connections smtp-sink serves at
# once; default: more than any server holds), KEEP=1 keeps the temp dir.
# See bench/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MSGS=${MSGS:-200}
TRICKLERS=${TRICKLERS:-1000}
ADDRS=${ADDRS:-200}
EVERY=${EVERY:-10}
BURST=${BURST:-5000}
JUNK=${JUNK:-200}
MAXCONN=${MAXCONN:-1000}
RAMP=${RAMP:-15}
TIMEOUT=${TIMEOUT:-2}
BUDGET=${BUDGET:-30}
ATTACKS=${ATTACKS:-slowloris burst junk}
SERVERS=${SERVERS:-blackpony haproxy nginx}
BEGAN=$(date +%s)
read -r -a BP_ARGS <<<"${BP_ARGS:-}"
BLACKPONY=${BLACKPONY:-$ROOT/target/release/blackpony}
NGINX_MAIL_MODULE=/usr/lib/nginx/modules/ngx_mail_module.so

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (smtp-sink -u postfix, ulimit -n 65536): sudo $0"

need_pkgs=()
command -v smtp-sink >/dev/null || need_pkgs+=(postfix)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
[ -e "$NGINX_MAIL_MODULE" ] || need_pkgs+=(libnginx-mod-mail)
[ -x /usr/bin/python3 ] || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi
PY=/usr/bin/python3
if [ ! -x "$BLACKPONY" ]; then
    say "building blackpony (cargo build --release)"
    (cd "$ROOT" && cargo build --release) >&2
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[ "$NOFILE" -ge $((2 * BURST + 4 * MAXCONN)) ] || die "open-file limit $NOFILE is too low"
T=$(mktemp -d /tmp/blackpony-hostile.XXXXXX)
chmod 755 "$T"
BLACKPONY=$(realpath "$BLACKPONY")
cd "$T"
trap cleanup EXIT
trap 'exit 130' INT TERM

BUSY=$(cpu_busy)
[ "$BUSY" -gt 15 ] && say "WARNING: the machine was ${BUSY}% busy before the benchmark started; numbers will be noisy"

read -r SINK BP HAP NGX NGXAUTH <<<"$("$PY" "$HERE/smtpbench.py" ports 5)"

# One backend for all three, so that the backend is never what runs out:
# smtp-sink serves at most 256 connections at once unless told (-m), and
# the rest wait in its accept queue without a greeting (with the default,
# 744 of 1,000 trickler sessions waited there and the normal client's
# connection behind them: the backend, not the server in front, was
# saturated). Each server holds one backend connection per client.
# BACKEND_SLOTS lowers it to play a backend with few processes (Postfix:
# 100 smtpd by default).
start sink smtp-sink -u postfix -m "${BACKEND_SLOTS:-$((BURST + 4 * MAXCONN))}" -c "127.0.0.1:$SINK" 8192
start blackpony "$BLACKPONY" inbound --listen "127.0.0.1:$BP" --backend "127.0.0.1:$SINK" \
    --identity none --hostname bench.test --max-connections "$MAXCONN" ${BP_ARGS[@]+"${BP_ARGS[@]}"}

haproxy_conf "$T/haproxy.cfg" "$HAP" "$SINK"
start haproxy haproxy -db -q -f "$T/haproxy.cfg"

mkdir -p "$T/nginx/tmp"
cat >"$T/nginx/nginx.conf" <<EOF
load_module $NGINX_MAIL_MODULE;
worker_processes 2;
worker_rlimit_nofile $NOFILE;
pid $T/nginx/nginx.pid;
daemon off;
error_log $T/nginx/error.log info;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    client_body_temp_path $T/nginx/tmp;
    proxy_temp_path $T/nginx/tmp;
    fastcgi_temp_path $T/nginx/tmp;
    uwsgi_temp_path $T/nginx/tmp;
    scgi_temp_path $T/nginx/tmp;
    server {
        listen 127.0.0.1:$NGXAUTH;
        location / {
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port $SINK;
            return 204;
        }
    }
}
mail {
    server_name bench.test;
    auth_http 127.0.0.1:$NGXAUTH/auth;
    xclient off;
    smtp_auth none;
    proxy_pass_error_message on;
    server {
        listen 127.0.0.1:$NGX;
        protocol smtp;
    }
}
EOF
start nginx nginx -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf"

for p in "$SINK" "$BP" "$HAP" "$NGX"; do wait_port 127.0.0.1 "$p"; done
sleep 0.3
# shellcheck disable=SC2154
NGX_PIDS=$(pgrep -P "$PID_nginx" | paste -sd' ' -)

rss_kib() { # PIDS... : summed VmRSS
    local p s=0 v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
field() { "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print("-" if v is None else v)' "$1" "$2"; }
ratio() { "$PY" -c 'import sys
a, b = sys.argv[1], sys.argv[2]
print("-" if "-" in (a, b) or float(b) == 0 else "%.2f" % (float(a) / float(b)))' "$1" "$2"; }

# The normal client: MSGS messages, TIMEOUT s each, BUDGET s in all (what
# is left is not attempted and not served).
client() { # PORT
    timeout $((BUDGET + 30)) "$PY" "$HERE/hostile.py" client 127.0.0.1 "$1" "$MSGS" "$TIMEOUT" "$BUDGET" \
        || echo '{"served": 0, "of": '"$MSGS"', "attempted": null, "msg_s": null, "p50_ms": null, "p99_ms": null, "errors": {"client": 1}}'
}

printf '%-10s %-10s %9s %6s %8s %8s %6s %6s %8s %10s  %s\n' \
    server attack served msg/s p50_ms p99_ms "p50×" "p99×" rss_kib log_bytes "attacker / errors"
VERDICTS=()
row() { # SERVER ATTACK CLIENT_JSON BASE_JSON RSS LOG ATTACKER_JSON
    local p50 p99 served attempted r99
    p50=$(field "$3" p50_ms); p99=$(field "$3" p99_ms)
    served=$(field "$3" served); attempted=$(field "$3" attempted)
    r99=$(ratio "$p99" "$(field "$4" p99_ms)")
    printf '%-10s %-10s %4s/%-4s %6s %8s %8s %6s %6s %8s %10s  %s %s\n' "$1" "$2" \
        "$served" "$attempted" "$(field "$3" msg_s)" "$p50" "$p99" \
        "$(ratio "$p50" "$(field "$4" p50_ms)")" "$r99" \
        "$5" "$6" "$7" "$(field "$3" errors)"
    if [ "$2" = slowloris ]; then
        local verdict
        verdict=$("$PY" -c 'import sys
served, msgs, r99 = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ok = served not in ("-", "None") and int(served) * 100 >= 95 * msgs and r99 != "-" and float(r99) <= 2
print("met" if ok else "NOT met")' "$served" "$MSGS" "$r99")
        VERDICTS+=("$1: $verdict ($served/$MSGS served, p99 ${r99}× baseline)")
    fi
}

# attack NAME PORT : runs one attack in the background (python itself, so
# that $ATTACK is its pid: a background subshell would ignore SIGINT and
# leave the attacker running), its summary to $T/attack.json
attack() {
    local args
    case $1 in
        slowloris) args=(trickle 127.0.0.1 "$2" "$TRICKLERS" "$ADDRS" "$EVERY" 600) ;;
        burst) args=(burst 127.0.0.1 "$2" "$BURST" 10) ;;
        junk) args=(junk 127.0.0.1 "$2" "$JUNK" 600) ;;
    esac
    "$PY" "$HERE/hostile.py" "${args[@]}" >"$T/attack.json" 2>"$T/attack.err" &
    ATTACK=$!
    ATTACKERS+=("$ATTACK")
}
ATTACKERS=()
# Whatever attacker is still running when the script ends.
bench_stop() { local p; for p in "${ATTACKERS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
bench_kill() { local p; for p in "${ATTACKERS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }

# bench_one SERVER PORT LOGFILE PIDS...
bench_one() {
    local server=$1 port=$2 logf=$3; shift 3
    local base out rss log0 a
    base=$(client "$port")
    row "$server" none "$base" "$base" "$(rss_kib "$@")" 0 "-"
    for a in $ATTACKS; do
        log0=$(size_of "$logf")
        attack "$a" "$port"
        case $a in
            slowloris) sleep "$RAMP" ;;
            burst) sleep 0.5 ;;
            junk) sleep 2 ;;
        esac
        out=$(client "$port")
        rss=$(rss_kib "$@")
        # The burst ends on its own (every connection waits 10 s at most);
        # the others run until stopped.
        if [ "$a" = burst ]; then
            for _ in $(seq 300); do kill -0 "$ATTACK" 2>/dev/null || break; sleep 0.1; done
        fi
        kill -TERM "$ATTACK" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$ATTACK" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ATTACK" 2>/dev/null || true
        wait "$ATTACK" 2>/dev/null || true
        row "$server" "$a" "$out" "$base" "$rss" $(( $(size_of "$logf") - log0 )) \
            "$(tr -d '\n' <"$T/attack.json")"
        # Let the server settle (sessions cut, slots freed) before the next.
        sleep 3
    done
}

say "blackpony $("$BLACKPONY" --version 2>/dev/null | awk '{print $2}'), $(haproxy -v | head -1 | awk '{print $1, $3}'), $(nginx -v 2>&1 | sed 's/.*: //')"
for server in $SERVERS; do
    case $server in
        # shellcheck disable=SC2154
        blackpony) bench_one blackpony "$BP" "$T/blackpony.log" "$PID_blackpony" ;;
        # shellcheck disable=SC2154
        haproxy) bench_one haproxy "$HAP" /dev/null "$PID_haproxy" ;;
        # shellcheck disable=SC2086
        nginx) bench_one nginx "$NGX" "$T/nginx/error.log" $NGX_PIDS ;;
    esac
done
say "blackpony log lines by kind: $(grep -o ' \(refused\|end\|timeout waiting_for\|evicted\)=\?[a-z-]*' "$T/blackpony.log" | sort | uniq -c | sort -rn | head -8 | tr -s ' ' | paste -sd, -)"
echo
echo "issue 8's aim under the slowloris (>= 95% served, p99 <= 2x baseline):"
for v in "${VERDICTS[@]}"; do echo "  $v"; done
say "took $(( $(date +%s) - BEGAN )) s"
