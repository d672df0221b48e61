#!/usr/bin/env bash
# Benchmark `blackpony seal` (the sealed relay: every message sealed with age
# and fsynced before 250) against a private Postfix accepting the same
# messages into its queue. Run as root:
#
#   bench/seal.sh            (or: sudo bench/seal.sh)
#
# In one run, per message size: smtp-source (20 sessions, each kept open)
# sends MSGS messages to blackpony seal, then the same to a Postfix whose
# smtpd puts every message on hold (the queue file is written and fsynced by
# cleanup, nothing is delivered); msgs/s of each and the ratio seal/Postfix.
# Both listen on 127.0.0.1, ports chosen at run time; spool and queue are in
# one temp dir on a disk (not tmpfs: fsync must cost what it costs); every
# process started here is stopped on exit; every wait is bounded. Needs
# postfix (smtp-source) and age, which scripts/install-deps.sh installs; it
# checks and stops if they are missing. Knobs (environment): BLACKPONY=path
# (default target/release/blackpony), MSGS (2000), SESSIONS (20), SIZES
# ("1024 102400"), REPS (1), TMPBASE (/var/tmp), KEEP=1 keeps the temp dir.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MSGS=${MSGS:-2000}
SESSIONS=${SESSIONS:-20}
SIZES=${SIZES:-1024 102400}
read -ra SIZE_LIST <<<"$SIZES"
REPS=${REPS:-1}
BLACKPONY=${BLACKPONY:-$ROOT/target/release/blackpony}
PY=/usr/bin/python3
BENCH=$HERE/smtpbench.py

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (a private Postfix instance): sudo $0"
missing=()
for tool in smtp-source postfix postconf postsuper script age; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -x "$PY" ] || missing+=(python3)
[ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (install with: sudo scripts/install-deps.sh)"
[ -x "$BLACKPONY" ] || die "no blackpony binary at $BLACKPONY (cargo build --release, or BLACKPONY=path)"

T=$(mktemp -d "${TMPBASE:-/var/tmp}/blackpony-sealbench.XXXXXX")
chmod 755 "$T"
FS=$(df --output=fstype "$T" | tail -1)
[ "$FS" = tmpfs ] && die "$T is on tmpfs: fsync would cost nothing there; set TMPBASE to a directory on a disk"
snapshot_blackpony
begin_run

read -r SEAL_PORT PF_PORT <<<"$("$PY" "$BENCH" ports 2)"

# ---- blackpony seal: one domain key, a spool in $T
"$BLACKPONY" keygen --age --out "$T/mail.age.key" >"$T/keygen.out" 2>&1 \
    || die "blackpony keygen --age failed: $(cat "$T/keygen.out")"
AGE_PUB=$(grep -o 'age1[0-9a-z]*' "$T/keygen.out" | head -1)
[ -n "$AGE_PUB" ] || die "no age1… public key in: $(cat "$T/keygen.out")"
mkdir -p "$T/spool"
start seal "$BLACKPONY" seal --listen "127.0.0.1:$SEAL_PORT" --domain bench.test \
    --recipient-key "$AGE_PUB" --spool "$T/spool" --hostname seal.bench.test \
    --max-connections 200

# ---- Postfix: smtpd on loopback, every message put on hold (queued and
# fsynced, never delivered). in_flow_delay = 0: with nothing going through
# qmgr no flow-control tokens come back, and each message would otherwise
# wait up to 1 s for one.
PF=$T/postfix
postfix_instance "$PF" "127.0.0.1:$PF_PORT" ""
cat >>"$PF/etc/main.cf" <<EOF
myhostname = pf.bench.test
relay_domains = bench.test
smtpd_recipient_restrictions = check_recipient_access static:HOLD
in_flow_delay = 0
default_process_limit = 100
EOF
say "starting blackpony seal and a private Postfix"
postfix_start "$PF" 127.0.0.1 "$PF_PORT"
wait_port 127.0.0.1 "$SEAL_PORT"

# ------------------------------------------------------------------ helpers
spool_count() { find "$T/spool/new" -type f 2>/dev/null | wc -l || true; }
hold_count() { find "$PF/queue/hold" -type f 2>/dev/null | wc -l || true; }
empty_seal() { find "$T/spool/new" -type f -delete; }
empty_postfix() { script -qc "postsuper -c $PF/etc -d ALL hold" /dev/null >/dev/null 2>&1 || true; }
ticks() { # PIDS... : user+system CPU ticks so far
    local p t=0 line fields
    for p in "$@"; do
        line=$(cut -d')' -f2 "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a fields <<<"$line"
        t=$((t + fields[11] + fields[12]))
    done
    echo "$t"
}
CLK=$(getconf CLK_TCK)

declare -A RATES SECS CPU
FAILURES=()

# run KEY PORT SIZE COUNTER EMPTY PIDFUNC : smtp-source -> server, timed
run() {
    local key=$1 port=$2 size=$3 counter=$4 empty=$5 pidfunc=$6
    local before after t0 t1 c0 c1 rc=0 out pids
    $empty
    before=$($counter)
    read -r -a pids <<<"$($pidfunc)"
    c0=$(ticks "${pids[@]}")
    t0=$(date +%s.%N)
    out=$(timeout 600 smtp-source -d -s "$SESSIONS" -m "$MSGS" -l "$size" \
        -f sender@client.test -t "user@bench.test" "127.0.0.1:$port" 2>&1) || rc=$?
    t1=$(date +%s.%N)
    read -r -a pids <<<"$($pidfunc) ${pids[*]}"
    c1=$(ticks "${pids[@]}")
    after=$($counter)
    local got=$((after - before))
    local secs rate
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    rate=$(awk -v n="$MSGS" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
    RATES[$key]="${RATES[$key]:-} $rate"
    SECS[$key]="${SECS[$key]:-} $secs"
    CPU[$key]="${CPU[$key]:-} $(( (c1 - c0) * 1000000 / CLK / MSGS ))"
    if [ "$rc" != 0 ] || [ "$got" != "$MSGS" ]; then
        FAILURES+=("$key: smtp-source exit $rc, $got of $MSGS messages stored; output: $(tail -c 400 <<<"$out")")
    fi
    say "  $key: $rate msgs/s ($secs s, $got of $MSGS stored)"
}
seal_pids() { echo "$PID_seal"; }
# smtpd and cleanup come and go; those alive at either end are counted
postfix_pids() { postfix_env_pids "$PF/etc" | tr '\n' ' '; }

# warm-up: page cache, Postfix's smtpd and cleanup processes
say "warm-up (${SECONDS}s)"
for port in "$PF_PORT" "$SEAL_PORT"; do
    smtp-source -d -s 4 -m 40 -l 1024 -f sender@client.test -t user@bench.test "127.0.0.1:$port" \
        || die "warm-up smtp-source to 127.0.0.1:$port failed"
done
# One sealed file of each size must open with Debian's age and hold
# smtp-source's message: the benchmark measures the real thing.
check_sealed() { # SIZE
    local f
    f=$(find "$T/spool/new" -type f -print -quit)
    [ -n "$f" ] || { FAILURES+=("no sealed file for size $1"); return; }
    if ! age -d -i "$T/mail.age.key" "$f" >"$T/opened" 2>"$T/age.err"; then
        FAILURES+=("age -d failed on $f: $(cat "$T/age.err")")
    elif [ "$(head -c 18 "$T/opened")" != "BLACKPONY-SEALED 1" ]; then
        FAILURES+=("$f does not open to a sealed message")
    elif [ "$(stat -c %s "$T/opened")" -lt "$1" ]; then
        FAILURES+=("$f opens to $(stat -c %s "$T/opened") octets, less than the $1 sent")
    fi
}

for r in $(seq "$REPS"); do
    for size in "${SIZE_LIST[@]}"; do
        say "round $r, $size octets: smtp-source -d -s $SESSIONS -m $MSGS -l $size (${SECONDS}s)"
        # take turns: who goes first alternates between rounds
        if [ $((r % 2)) = 1 ]; then
            run "pf_$size" "$PF_PORT" "$size" hold_count empty_postfix postfix_pids
            run "seal_$size" "$SEAL_PORT" "$size" spool_count empty_seal seal_pids
        else
            run "seal_$size" "$SEAL_PORT" "$size" spool_count empty_seal seal_pids
            run "pf_$size" "$PF_PORT" "$size" hold_count empty_postfix postfix_pids
        fi
        check_sealed "$size"
    done
done
empty_seal
empty_postfix
say "done (${SECONDS}s)"

# ------------------------------------------------------------------ report
SEAL_ODD=$(grep -v -E ' (connect|disconnect|listening|started) |: (seal|limits): ' "$T/seal.log" | head -8 || true)
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
{
echo
echo "blackpony seal benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "blackpony: $BP_SRC (built $BP_BUILT, sha256 $(sha256sum "$BLACKPONY" | cut -c1-12); $(repo_head))"
echo "postfix $(postconf -d -h mail_version 2>/dev/null); spool and queue on $FS ($(df --output=source "$T" | tail -1))"
echo "smtp-source -d -s $SESSIONS -m $MSGS -l SIZE -> 127.0.0.1; medians of $REPS run(s); other load: ${BUSY}% CPU busy at the start"
[ "$BUSY" -gt 15 ] && echo "WARNING: something else used ${BUSY}% of the CPU at the start; the figures are noisy"
echo
printf '%-52s %8s %8s %9s %6s\n' "" "msgs/s" "secs" "srv us/m" "ratio"
for size in "${SIZE_LIST[@]}"; do
    pf=$(median <<<"${RATES[pf_$size]:-}")
    sl=$(median <<<"${RATES[seal_$size]:-}")
    echo "$size-octet messages"
    printf '%-52s %8s %8s %9s %6s\n' "  Postfix smtpd -> cleanup -> hold queue (fsync file)" "$pf" \
        "$(median <<<"${SECS[pf_$size]:-}")" "$(median <<<"${CPU[pf_$size]:-}")" "1.00"
    printf '%-52s %8s %8s %9s %6s\n' "  blackpony seal -> age -> spool (fsync file + dir)" "$sl" \
        "$(median <<<"${SECS[seal_$size]:-}")" "$(median <<<"${CPU[seal_$size]:-}")" "$(ratio "$sl" "$pf")"
    met=$(awk -v a="$sl" -v b="$pf" 'BEGIN { print (b > 0 && a / b >= 0.5) ? "met" : "NOT met" }')
    echo "  aim seal/Postfix >= 0.5: $met"
done
echo "srv us/m = CPU (user + system) of the server per message: the seal process, or the Postfix"
echo "processes alive at the start or end of the run (smtpd, cleanup, ...; those that exited meanwhile"
echo "are missed). secs = wall time of smtp-source, from its start to its last 250 and QUIT"
echo
if [ ${#FAILURES[@]} -gt 0 ]; then
    echo "FAILURES:"
    printf '  %s\n' "${FAILURES[@]}"
else
    echo "no failures: smtp-source exited 0 every time, each server stored every message, and a sealed"
    echo "file of each size opened with age -d"
fi
if [ -n "$SEAL_ODD" ]; then
    echo "blackpony seal logged (first lines that are not session or seal records):"
    printf '%s\n' "$SEAL_ODD" | sed 's/^/  /'
fi
}
