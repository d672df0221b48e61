#!/usr/bin/env bash
# CPU time `blackpony inbound` spends per relayed message, and how its
# sessions and that CPU spread over its serving threads, for one or more
# builds taking turns in the same run: figures that hold still on a busy
# machine, unlike messages per second. Run as root (smtp-sink -u postfix):
#
#   BINARIES="before:/tmp/bp-old after:target/release/blackpony" bench/cpu.sh
#
# Each round starts a fresh blackpony (`--identity none`, 2 serving threads
# unless THREADS says otherwise) in front of smtp-sink and runs
# `smtp-source -d -s SESSIONS -m MSGS -l SIZE` through it (20 sessions kept
# open, one transaction at a time). Printed per build and round: server CPU
# (user + system, /proc/PID/stat) per message, the sessions each thread
# served (its `shutdown: thread=serve-N sessions=M` line; "-" for a build
# without that line), and each serving thread's share of the CPU
# (/proc/PID/task/*/stat of the `serve-N` threads). Then the median per
# build. Knobs: BINARIES (label:path ...; default: target/release/blackpony),
# ROUNDS (3), MSGS (20000), SESSIONS (20), SIZE (1024), THREADS (2), KEEP=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BINARIES=${BINARIES:-"blackpony:$ROOT/target/release/blackpony"}
ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
THREADS=${THREADS:-2}
PY=/usr/bin/python3

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (smtp-sink -u postfix): sudo $0"
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null ||
    die "smtp-source/smtp-sink missing: apt-get install postfix"
T=$(mktemp -d /tmp/blackpony-cpu.XXXXXX)
chmod 755 "$T"
begin_run
TICK=$(getconf CLK_TCK)

read -r SINK BP <<<"$("$PY" "$HERE/smtpbench.py" ports 2)"
start sink smtp-sink -u postfix -m 1000 "127.0.0.1:$SINK" 4096
wait_port 127.0.0.1 "$SINK"

# ticks PID|PID/task/TID : user + system clock ticks
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

declare -A RESULTS
n=0
for label_path in $BINARIES; do
    label=${label_path%%:*}
    bin=$(realpath "${label_path#*:}")
    [ -x "$bin" ] || die "no $bin"
    cp "$bin" "$T/bp-$label"
done
say "blackpony inbound, smtp-source -d -s $SESSIONS -m $MSGS -l $SIZE, THREADS=$THREADS, $ROUNDS rounds; busy before: $BUSY%"
printf '%-10s %5s %10s %16s %20s\n' build round "cpu us/m" "sessions/thread" "cpu share/thread"
for r in $(seq "$ROUNDS"); do
    for label_path in $BINARIES; do
        label=${label_path%%:*}
        n=$((n + 1))
        name=bp$n
        start "$name" env TOKIO_WORKER_THREADS="$THREADS" "$T/bp-$label" inbound \
            --listen "127.0.0.1:$BP" --backend "127.0.0.1:$SINK" --identity none \
            --hostname bench.test
        pid=$(eval echo "\$PID_$name")
        wait_port 127.0.0.1 "$BP"
        sleep 0.5
        before=$(ticks "$pid")
        declare -A tbefore=()
        for t in /proc/"$pid"/task/*; do tbefore[${t##*/}]=$(ticks "$pid/task/${t##*/}"); done
        timeout 300 smtp-source -d -s "$SESSIONS" -m "$MSGS" -l "$SIZE" \
            -f from@bench.test -t to@bench.test "127.0.0.1:$BP" >"$T/source.out" 2>&1 ||
            die "smtp-source failed: $(head -c 300 "$T/source.out")"
        after=$(ticks "$pid")
        shares=()
        total=$((after - before))
        for t in /proc/"$pid"/task/*; do
            tid=${t##*/}
            grep -q '^serve-' "$t/comm" 2>/dev/null || continue
            d=$(($(ticks "$pid/task/$tid") - ${tbefore[$tid]:-0}))
            shares+=("$(( total > 0 ? 100 * d / total : 0 ))%")
        done
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        sessions=$(grep -o 'thread=serve-[0-9]* sessions=[0-9]*' "$T/$name.log" |
            sort -t- -k2 -n | sed 's/.*sessions=//' | paste -sd/ -)
        us=$("$PY" -c 'import sys; print("%.1f" % (int(sys.argv[1]) * 1e6 / int(sys.argv[2]) / int(sys.argv[3])))' \
            "$total" "$TICK" "$MSGS")
        RESULTS[$label]+="$us "
        printf '%-10s %5s %10s %16s %20s\n' "$label" "$r" "$us" "${sessions:--}" "${shares[*]}"
    done
done
echo
for label_path in $BINARIES; do
    label=${label_path%%:*}
    # shellcheck disable=SC2086
    printf '%-10s median cpu us/m %s\n' "$label" \
        "$("$PY" -c 'import sys, statistics; print("%.1f" % statistics.median(map(float, sys.argv[1:])))' ${RESULTS[$label]})"
done
