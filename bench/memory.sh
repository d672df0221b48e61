#!/usr/bin/env bash
# Memory of `blackpony inbound`: what an idle session costs (plain and after
# STARTTLS), against haproxy in front of the same backend as the baseline,
# and whether the process gives memory back after thousands of sessions.
# Run as root (smtp-sink -u postfix, ulimit -n):
#
#   bench/memory.sh            (or: sudo bench/memory.sh)
#
# Steps, one blackpony process throughout: its RSS after one warm-up
# message (start); IDLE (1,000) idle plain sessions, then IDLE sessions
# idle after STARTTLS + EHLO (KiB per session, and haproxy's per idle
# connection as the reference); then ROUNDS (3) rounds of SESSIONS (5,000)
# complete sessions (smtpload -1 -T: greeting, EHLO, STARTTLS, EHLO, one
# message, QUIT, 50 at a time), with the RSS after each once they closed.
# A leak grows by about the same amount every round; an allocator keeping
# freed memory for reuse grows in the first round and then stays flat.
# Knobs: BLACKPONY=path, IDLE, SESSIONS, ROUNDS, BP_ENV (environment for
# blackpony, e.g. "MALLOC_ARENA_MAX=2"), KEEP=1. About a minute.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
IDLE=${IDLE:-1000}
SESSIONS=${SESSIONS:-5000}
ROUNDS=${ROUNDS:-3}
BLACKPONY=${BLACKPONY:-$ROOT/target/release/blackpony}
PY=/usr/bin/python3

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (smtp-sink -u postfix, ulimit -n): sudo $0"
command -v smtp-sink >/dev/null || die "smtp-sink missing: apt-get install postfix"
command -v haproxy >/dev/null || die "haproxy missing: apt-get install haproxy"
[ -x "$BLACKPONY" ] || die "no $BLACKPONY (cargo build --release, or BLACKPONY=path)"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((4 * IDLE + 200)) ] || die "open-file limit $(ulimit -n) is too low for IDLE=$IDLE"

T=$(mktemp -d /tmp/blackpony-memory.XXXXXX)
chmod 755 "$T"
BLACKPONY=$(realpath "$BLACKPONY")
trap cleanup EXIT
trap 'exit 130' INT TERM
cc -O2 -o "$T/smtpload" "$HERE/smtpload.c" -lssl -lcrypto

read -r SINK BP BPT HAP <<<"$("$PY" "$HERE/smtpbench.py" ports 4)"
# -m: smtp-sink serves 256 connections at once by default; more would
# wait in its accept queue without a greeting.
start sink smtp-sink -u postfix -m $((4 * IDLE + 100)) "127.0.0.1:$SINK" 8192
# Each idle measurement gets a fresh blackpony: memory freed by an earlier
# step and kept by the allocator would hide what the next step costs.
read -r -a BP_ENV <<<"${BP_ENV:-}"
bp() { # NAME PORT
    start "$1" env ${BP_ENV[@]+"${BP_ENV[@]}"} "$BLACKPONY" inbound --listen "127.0.0.1:$2" \
        --backend "127.0.0.1:$SINK" --identity none --hostname bench.test \
        --max-connections $((2 * IDLE)) --max-connections-per-client $((2 * IDLE)) \
        --max-connections-per-network $((2 * IDLE))
}
bp blackpony "$BP"
bp blackpony_tls "$BPT"
MAXCONN=$((2 * IDLE))
haproxy_conf "$T/haproxy.cfg" "$HAP" "$SINK"
start haproxy haproxy -db -q -f "$T/haproxy.cfg"
for p in "$SINK" "$BP" "$BPT" "$HAP"; do wait_port 127.0.0.1 "$p"; done

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
jget() { "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read()).get(sys.argv[1]))' "$1"; }
ratio() { "$PY" -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
idle() { # PORT PID [--starttls]
    "$PY" "$HERE/smtpbench.py" idle --addr "127.0.0.1:$1" --n "$IDLE" --pids "$2" "${@:3}"
}
sessions() { # PORT
    "$T/smtpload" -a "127.0.0.1:$1" -s 50 -m "$SESSIONS" -1 -T -t 120
}

say "blackpony $("$BLACKPONY" --version | awk '{print $2}'), $(haproxy -v | head -1 | awk '{print $1, $3}'); IDLE=$IDLE SESSIONS=$SESSIONS ROUNDS=$ROUNDS"
# shellcheck disable=SC2154
for p in "$BP" "$BPT"; do "$T/smtpload" -a "127.0.0.1:$p" -s 1 -m 1 -1 -T >/dev/null; done
"$T/smtpload" -a "127.0.0.1:$HAP" -s 1 -m 1 -1 >/dev/null
sleep 1
START=$(rss "$PID_blackpony")

# shellcheck disable=SC2154
BP_PLAIN=$(idle "$BP" "$PID_blackpony")
sleep 1
# shellcheck disable=SC2154
BP_TLS=$(idle "$BPT" "$PID_blackpony_tls" --starttls)
sleep 1
# shellcheck disable=SC2154
HAP_PLAIN=$(idle "$HAP" "$PID_haproxy")
sleep 1
AFTER_IDLE=$(rss "$PID_blackpony")

printf '%-44s %10s %10s %9s\n' "idle sessions ($IDLE each)" "KiB/sess" "alive" "× haproxy"
hap=$(jget kib_per_conn <<<"$HAP_PLAIN")
for row in "blackpony, plain:$BP_PLAIN" "blackpony, after STARTTLS + EHLO:$BP_TLS" "haproxy (TCP, reference):$HAP_PLAIN"; do
    name=${row%%:*}; json=${row#*:}
    printf '%-44s %10s %10s %9s\n' "$name" "$(jget kib_per_conn <<<"$json")" \
        "$(jget alive <<<"$json")/$IDLE" "$(ratio "$(jget kib_per_conn <<<"$json")" "$hap")"
done

echo
printf '%-44s %10s %10s %9s\n' "blackpony RSS after sessions closed" "RSS KiB" "× start" "sessions"
printf '%-44s %10s %10s %9s\n' "start (after one message)" "$START" "1.00" "-"
printf '%-44s %10s %10s %9s\n' "after $IDLE idle sessions closed" "$AFTER_IDLE" "$(ratio "$AFTER_IDLE" "$START")" "$IDLE"
PREV=$AFTER_IDLE
GROWTH=()
for r in $(seq "$ROUNDS"); do
    out=$(sessions "$BP") || die "smtpload round $r: $out"
    ok=$(jget ok <<<"$out")
    sleep 2
    now=$(rss "$PID_blackpony")
    printf '%-44s %10s %10s %9s\n' "after round $r of $SESSIONS STARTTLS sessions" "$now" "$(ratio "$now" "$START")" "$ok"
    GROWTH+=($((now - PREV)))
    PREV=$now
done
echo "growth per round (KiB): ${GROWTH[*]}"

# What of it is free memory the allocator keeps (glibc returns free pages
# inside its heaps only on malloc_trim) and what is still in use: ask the
# process to trim, through gdb when it is installed.
if command -v gdb >/dev/null; then
    gdb -p "$PID_blackpony" -batch -ex 'call (int) malloc_trim(0)' >/dev/null 2>&1 || true
    sleep 0.5
    now=$(rss "$PID_blackpony")
    printf '%-44s %10s %10s %9s\n' "after malloc_trim(0) (free but kept: $((PREV - now)) KiB)" "$now" "$(ratio "$now" "$START")" "-"
else
    say "gdb not installed: the share of free memory kept by the allocator is not shown"
fi
