#!/usr/bin/env bash
# Benchmark blackpony's outbound transport (`blackpony deliver`, `blackpony
# outbound`) against peers: msmtp and dma for one-shot delivery, Postfix's
# own smtp client for a long-running transport. Run as root:
#
#   bench/outbound.sh            (or: sudo bench/outbound.sh)
#
# It re-runs itself in a private network + mount namespace: its own loopback
# (127.0.0.0/8 only, nothing else reachable), a dnsmasq on 127.0.0.1:53 that
# every resolver there uses (a private /etc/resolv.conf, so dma and Postfix,
# which use the libc resolver, do MX lookups too) and MX hosts on port 25.
# Other ports are chosen at run time; every process started here is stopped
# on exit; every wait is bounded. See bench/README.md for what the numbers
# mean. Knobs (environment): BLACKPONY=path (default target/release/blackpony,
# built if missing), REPS (3), ONESHOT_MSGS (150), TLS_MSGS (50),
# RELAY_MSGS (1500), RELAY_SESSIONS (10), SIZE (1024), DMA_ROOT (where the
# dma package is unpacked, default /var/cache/blackpony-bench/dma),
# KEEP=1 keeps the temp dir (configs, logs), BASELINE=path (another
# blackpony build: rows (b0) and (c0) in part 2, taking turns with (b), (c)),
# DNS_TTL (300: the TTL of every answer and the SOA minimum of the test zone,
# so negative answers carry an SOA as a deployed zone's do; 0: TTL 0 and
# NXDOMAIN/NODATA without an SOA, nothing cacheable, the old worst case),
# PARTS (default "1 2"; "2" runs only the long-running transport, e.g.
# `PARTS=2 REPS=9 RELAY_MSGS=4000` to read issue 12's aim against the round spread).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
REPS=${REPS:-3}
ONESHOT_MSGS=${ONESHOT_MSGS:-150}
TLS_MSGS=${TLS_MSGS:-50}
RELAY_MSGS=${RELAY_MSGS:-1500}
RELAY_SESSIONS=${RELAY_SESSIONS:-10}
SIZE=${SIZE:-1024}
DNS_TTL=${DNS_TTL:-300}
PARTS=${PARTS:-1 2}
for p in $PARTS; do case $p in 1|2) ;; *) echo "PARTS: unknown part '$p' (known: 1 2)" >&2; exit 1 ;; esac; done
# want_part N : whether part N is to be run (and reported)
want_part() { [[ " $PARTS " == *" $1 "* ]]; }
BLACKPONY=${BLACKPONY:-$ROOT/target/release/blackpony}
BASELINE=${BASELINE:-}
DMA_ROOT=${DMA_ROOT:-/var/cache/blackpony-bench/dma}
DMA=$DMA_ROOT/usr/sbin/dma
PY=/usr/bin/python3
BENCH=$HERE/smtpbench.py

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (namespaces, port 25, smtp-sink -u postfix, Postfix): sudo $0"

# ------------------------------------------------------------------ outside the namespace: tools
if [ -z "${BLACKPONY_BENCH_NS:-}" ]; then
    need_pkgs=()
    command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null \
        && command -v postfix >/dev/null || need_pkgs+=(postfix)
    command -v msmtp >/dev/null || need_pkgs+=(msmtp)
    command -v haproxy >/dev/null || need_pkgs+=(haproxy)
    command -v dnsmasq >/dev/null || need_pkgs+=(dnsmasq-base)
    command -v dig >/dev/null || need_pkgs+=(bind9-dnsutils)
    command -v ip >/dev/null || need_pkgs+=(iproute2)
    command -v unshare >/dev/null || need_pkgs+=(util-linux)
    command -v script >/dev/null || need_pkgs+=(bsdutils)
    command -v openssl >/dev/null || need_pkgs+=(openssl)
    [ -x "$PY" ] || need_pkgs+=(python3)
    if [ ${#need_pkgs[@]} -gt 0 ]; then
        say "installing: ${need_pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
    fi
    # dma conflicts with postfix as a package: unpack it and run it from there.
    if [ ! -x "$DMA" ]; then
        say "unpacking dma into $DMA_ROOT (apt-get download + dpkg -x)"
        dl=$(mktemp -d)
        chmod 777 "$dl"   # apt's _apt user downloads into it
        (cd "$dl" && apt-get download dma >&2) || { apt-get update -qq && (cd "$dl" && apt-get download dma >&2); }
        mkdir -p "$DMA_ROOT"
        dpkg -x "$dl"/dma_*.deb "$DMA_ROOT"
        rm -rf "$dl"
        [ -x "$DMA" ] || die "no dma binary at $DMA after unpacking"
    fi
    if [ ! -x "$BLACKPONY" ]; then
        say "building blackpony (cargo build --release)"
        (cd "$ROOT" && cargo build --release) >&2
    fi
    [ -z "$BASELINE" ] || [ -x "$BASELINE" ] || die "BASELINE=$BASELINE is not an executable"
    case $DNS_TTL in ''|*[!0-9]*) die "DNS_TTL=$DNS_TTL is not a number of seconds" ;; esac
    export BLACKPONY_BENCH_NS=1 BLACKPONY BASELINE DNS_TTL PARTS
    exec unshare --mount --net --propagation private "$BASH" "${BASH_SOURCE[0]}" "$@"
fi

# ------------------------------------------------------------------ inside: setup
ip link set lo up
BLACKPONY=$(realpath "$BLACKPONY")
T=$(mktemp -d /tmp/blackpony-outbench.XXXXXX)
chmod 755 "$T"
cd "$T"
snapshot_blackpony
if [ -n "$BASELINE" ]; then
    # a copy too, for the same reason as BLACKPONY's
    BASELINE_SRC=$(realpath "$BASELINE")
    cp "$BASELINE" "$T/blackpony-baseline"
    BASELINE=$T/blackpony-baseline
fi
begin_run

# A private /etc for this namespace: resolv.conf -> the dnsmasq below, and
# dma's config (dma reads only /etc/dma/dma.conf). Writes land in $T.
mkdir -p "$T/etc-up" "$T/etc-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/etc-up,workdir=$T/etc-work" /etc
printf 'nameserver 127.0.0.1\noptions attempts:1 timeout:2\n' >/etc/resolv.conf
mkdir -p /etc/dma
ln -sf "$T/dma.conf" /etc/dma/dma.conf

read -r SUBMIT BPS BPL BPS0 BPL0 HOP <<<"$("$PY" "$BENCH" ports 6)"
MX_SINK=127.0.0.2   # mx.sink.test: smtp-sink, plaintext
MX_TLS=127.0.0.3    # mx.tls.test: a private Postfix offering STARTTLS, discarding mail

# ---- DNS
cat >"$T/dnsmasq.conf" <<EOF
listen-address=127.0.0.1
bind-interfaces
port=53
no-resolv
no-hosts
local=/test/
pid-file=$T/dnsmasq.pid
mx-host=sink.test,mx.sink.test,10
mx-host=pf-mx.test,mx.sink.test,10
mx-host=bp-smtp.test,mx.sink.test,10
mx-host=bp-lmtp.test,mx.sink.test,10
mx-host=bp0-smtp.test,mx.sink.test,10
mx-host=bp0-lmtp.test,mx.sink.test,10
host-record=mx.sink.test,$MX_SINK
mx-host=tls.test,mx.tls.test,10
host-record=mx.tls.test,$MX_TLS
EOF
if [ "$DNS_TTL" -gt 0 ]; then
    # What a deployed zone gives a long-running client: answers with a TTL,
    # and NXDOMAIN/NODATA with the zone's SOA in the authority section, whose
    # minimum bounds how long the negative answer may be cached (RFC 2308
    # §3, §5). dnsmasq serves an SOA only as an authoritative server: for
    # queries arriving at the auth-server address, here its only one. The
    # subnet keeps the reverse zone (PTR 127.0.0.2 -> mx.sink.test) served
    # as the host-records serve it without auth-zone.
    cat >>"$T/dnsmasq.conf" <<EOF
local-ttl=$DNS_TTL
auth-ttl=$DNS_TTL
auth-server=ns.test,127.0.0.1
auth-zone=test,127.0.0.0/8
auth-soa=1,hostmaster.test,1200,180,1209600
EOF
fi
start dnsmasq dnsmasq --keep-in-foreground --log-facility=- --conf-file="$T/dnsmasq.conf"

# ---- the plaintext MX
start sink smtp-sink -u postfix -c -h mx.sink.test "$MX_SINK:25" 1024

# ---- Postfix instances
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=mx.tls.test -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null
chmod 644 "$T/key.pem"

# The STARTTLS MX: accepts anything, offers STARTTLS, throws the mail away.
PF_MX=$T/pf-mx
postfix_instance "$PF_MX" "$MX_TLS:25" "tlsmgr    unix  -       -       n       1000?   1       tlsmgr"
cat >>"$PF_MX/etc/main.cf" <<EOF
myhostname = mx.tls.test
smtpd_banner = \$myhostname ESMTP Postfix (blackpony bench MX)
default_transport = discard:bench MX
relay_transport = discard:bench MX
smtpd_tls_security_level = may
smtpd_tls_cert_file = $T/cert.pem
smtpd_tls_key_file = $T/key.pem
smtpd_tls_loglevel = 1
smtp_tls_security_level = none
EOF

# The sending Postfix: smtp-source submits to it; the recipient domain picks
# the transport (one instance, one queue, the same limits for all rows).
PF_OUT=$T/pf-out
postfix_instance "$PF_OUT" "127.0.0.1:$SUBMIT" "smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
smtpnc    unix  -       -       n       -       -       smtp
  -o smtp_connection_cache_on_demand=no
lmtp      unix  -       -       n       -       -       lmtp"
cat >"$PF_OUT/transport" <<EOF
pf-mx.test      smtp:
sink.test       smtp:[$MX_SINK]:25
nocache.test    smtpnc:[$MX_SINK]:25
bp-smtp.test    smtp:[127.0.0.1]:$BPS
bp-lmtp.test    lmtp:inet:[127.0.0.1]:$BPL
bp0-smtp.test   smtp:[127.0.0.1]:$BPS0
bp0-lmtp.test   lmtp:inet:[127.0.0.1]:$BPL0
hop.test        smtp:[127.0.0.1]:$HOP
EOF
cat >>"$PF_OUT/etc/main.cf" <<EOF
myhostname = sender.test
transport_maps = texthash:$PF_OUT/transport
default_transport = error:not a bench domain
smtp_tls_security_level = none
default_process_limit = 100
smtp_destination_concurrency_limit = 20
lmtp_destination_concurrency_limit = 20
EOF

say "starting dnsmasq, smtp-sink, two private Postfix instances, blackpony outbound (smtp and lmtp), haproxy"
postfix_start "$PF_MX" "$MX_TLS" 25
postfix_start "$PF_OUT" 127.0.0.1 "$SUBMIT"

BP_COMMON=(--dns 127.0.0.1:53 --smtp-port 25 --helo-name bench.test)
# --max-connections above what the sending Postfix may open at once (20 per
# destination, plus the connections its cache holds while new ones open):
# with the default 20 the 21st gets 421 and Postfix suspends the destination
# for the rest of the run.
start bp_smtp "$BLACKPONY" outbound --listen "127.0.0.1:$BPS" --protocol smtp \
    "${BP_COMMON[@]}" --state-dir "$T/state-smtp" --max-connections 200
start bp_lmtp "$BLACKPONY" outbound --listen "127.0.0.1:$BPL" --protocol lmtp \
    "${BP_COMMON[@]}" --state-dir "$T/state-lmtp" --max-connections 200
mkdir -p "$T/state-smtp" "$T/state-lmtp" "$T/state-deliver"
# The hop floor, row (h): haproxy in TCP mode between Postfix's smtp client
# and smtp-sink. It parses nothing and moves bytes, the least any extra hop
# can do; (h) against (a) is what a second loopback hop costs on these two
# cores in this run, whoever makes it. MAXCONN as for blackpony's servers.
MAXCONN=200
haproxy_conf "$T/haproxy.cfg" "$HOP" 25 "$MX_SINK"
start hop haproxy -db -q -f "$T/haproxy.cfg"
BP_DOMAINS=(bp-smtp.test bp-lmtp.test hop.test)
if [ -n "$BASELINE" ]; then
    start bp0_smtp "$BASELINE" outbound --listen "127.0.0.1:$BPS0" --protocol smtp \
        "${BP_COMMON[@]}" --state-dir "$T/state0-smtp" --max-connections 200
    start bp0_lmtp "$BASELINE" outbound --listen "127.0.0.1:$BPL0" --protocol lmtp \
        "${BP_COMMON[@]}" --state-dir "$T/state0-lmtp" --max-connections 200
    mkdir -p "$T/state0-smtp" "$T/state0-lmtp"
    BP_DOMAINS+=(bp0-smtp.test bp0-lmtp.test)
fi
wait_port "$MX_SINK" 25
wait_port 127.0.0.1 "$BPS"
wait_port 127.0.0.1 "$BPL"
wait_port 127.0.0.1 "$HOP"
if [ -n "$BASELINE" ]; then
    wait_port 127.0.0.1 "$BPS0"
    wait_port 127.0.0.1 "$BPL0"
fi
for _ in $(seq 100); do
    dig +short +time=1 +tries=1 @127.0.0.1 -p 53 sink.test MX 2>/dev/null | grep -q mx.sink.test && break
    sleep 0.1
done
getent hosts mx.sink.test >/dev/null || die "the libc resolver in the namespace does not see dnsmasq (mx.sink.test)"
# The negative answer blackpony meets on every delivery (no MTA-STS record)
# must be what DNS_TTL says: with an SOA whose minimum is DNS_TTL, or none.
NEG_SOA=$(dig +time=1 +tries=1 @127.0.0.1 -p 53 _mta-sts.bp-smtp.test TXT 2>/dev/null \
    | awk '$4 == "SOA" {print $NF}')
if [ "$DNS_TTL" -gt 0 ]; then
    [ "$NEG_SOA" = "$DNS_TTL" ] || die "dnsmasq's NXDOMAIN for _mta-sts.bp-smtp.test carries no SOA with minimum $DNS_TTL (got '${NEG_SOA}')"
else
    [ -z "$NEG_SOA" ] || die "DNS_TTL=0, yet dnsmasq's NXDOMAIN for _mta-sts.bp-smtp.test carries an SOA"
fi

# ---- dma: MX lookups through the libc resolver (-> dnsmasq), port 25
mkdir -p "$T/dma-spool"
chown mail:mail "$T/dma-spool"
: >"$T/aliases"
dma_conf() { # [extra lines]
    {
        echo "SPOOLDIR $T/dma-spool"
        echo "ALIASES $T/aliases"
        echo "MAILNAME bench.test"
        echo "PORT 25"
        printf '%s\n' "$@"
    } >"$T/dma.conf"
    chmod 644 "$T/dma.conf"
}
dma_conf

# ---- the message: 1 KiB (SIZE), LF line ends as a local submitter gives it
"$PY" - "$T/message" "$SIZE" <<'EOF'
import sys
path, size = sys.argv[1], int(sys.argv[2])
head = ("From: <sender@bench.test>\nTo: <user@sink.test>\nSubject: outbound benchmark\n"
        "Date: Mon, 23 Nov 2026 09:00:00 +0000\nMessage-ID: <bench@bench.test>\n\n")
line = "The quick brown fox jumps over the lazy dog, 0123456789 abcdefghijklm\n"
body = ""
while len(head) + len(body) + len(line) <= size:
    body += line
body += "x" * max(0, size - len(head) - len(body) - 1) + "\n"
open(path, "w").write(head + body)
EOF

# ------------------------------------------------------------------ helpers
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
jget() { "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); v=d.get(sys.argv[1], ""); print(json.dumps(v) if isinstance(v, (list, dict)) else v)' "$1"; }
sink_count() { "$PY" "$BENCH" sink-count "$T/sink.log"; }
mx_count() { grep -c ' status=sent ' "$PF_MX/maillog" 2>/dev/null || true; }
tls_count() { grep -c 'TLS connection established from' "$PF_MX/maillog" 2>/dev/null || true; }
# settle FUNC : wait until FUNC's number stops moving (3 s at most), print it
settle() {
    local a b
    a=$($1)
    for _ in $(seq 15); do
        sleep 0.2
        b=$($1)
        [ "$a" = "$b" ] && break
        a=$b
    done
    echo "${a:-0}"
}

declare -A RATES MS CPU BPCPU SESS LOST ERRS TLSINFO
FAILURES=()

# oneshot KEY COUNTER N CMD... : N sequential invocations of CMD
oneshot() {
    local key=$1 counter=$2 n=$3; shift 3
    local before after out rc=0 ok failed expect=() tls0 tls1
    [ "$key" = bp ] || [ "$key" = bp_tls ] && expect=(--expect-stdout "2.0.0 ")
    before=$(settle "$counter")
    tls0=$(tls_count)
    out=$("$PY" "$BENCH" oneshot --n "$n" --message "$T/message" --timeout 30 "${expect[@]}" -- "$@") || rc=$?
    after=$(settle "$counter")
    tls1=$(tls_count)
    ok=$(jget ok <<<"$out"); failed=$(jget failed <<<"$out")
    [ -n "$ok" ] || { ok=0; failed=$n; }
    if [ "$counter" = mx_count ]; then
        # every session to the STARTTLS MX must have used TLS
        TLSINFO[$key]=$(grep 'TLS connection established from' "$PF_MX/maillog" | tail -1 \
            | sed -E 's/.*: (TLSv[0-9.]+) with cipher ([^ ]+).*key-exchange ([^ ]+).*/\1 \2 \3/')
        if [ $((tls1 - tls0)) -lt "$n" ]; then
            FAILURES+=("$key: only $((tls1 - tls0)) of $n sessions to the MX used TLS")
        fi
    fi
    RATES[$key]="${RATES[$key]:-} $(jget rate <<<"$out")"
    MS[$key]="${MS[$key]:-} $(jget ms_per_msg <<<"$out")"
    CPU[$key]="${CPU[$key]:-} $(jget cpu_us_per_msg <<<"$out")"
    LOST[$key]=$(( ${LOST[$key]:-0} + ok - (after - before) ))
    ERRS[$key]=$(( ${ERRS[$key]:-0} + failed ))
    if [ "$rc" != 0 ]; then
        FAILURES+=("$key: $failed of $n invocations failed; first: $(jget first_failures <<<"$out" | head -c 1500)")
        FAILURES+=("    command: $* <$T/message")
    fi
    say "  $key: $(jget rate <<<"$out") msgs/s, $(jget ms_per_msg <<<"$out") ms/msg, client cpu $(jget cpu_us_per_msg <<<"$out") us/msg, $ok ok, $failed failed, MX counted $((after - before))"
}

queue_files() { find "$PF_OUT/queue/incoming" "$PF_OUT/queue/active" "$PF_OUT/queue/deferred" \
    "$PF_OUT/queue/maildrop" "$PF_OUT/queue/hold" -type f 2>/dev/null | wc -l; }

# relay KEY DOMAIN PIDS : smtp-source -> sending Postfix -> transport -> smtp-sink
RUN=0
relay() {
    local key=$1 domain=$2 pids=$3 out rc=0 rcpt got sent deferred bounced left sess0 sess1
    RUN=$((RUN + 1))
    sess0=$("$PY" "$BENCH" sink-count --sessions "$T/sink.log")
    rcpt="run$RUN@$domain"
    out=$("$PY" "$BENCH" relay --sink-log "$T/sink.log" --expect "$RELAY_MSGS" --pids "$pids" --timeout 120 \
        ${BREAKDOWN:+--breakdown} -- \
        smtp-source -s "$RELAY_SESSIONS" -m "$RELAY_MSGS" -l "$SIZE" -f sender@client.test -t "$rcpt" \
        "127.0.0.1:$SUBMIT") || rc=$?
    got=$(jget got <<<"$out")
    # let the queue drain (bounded), then read what the sending Postfix logged
    for _ in $(seq 100); do [ "$(queue_files)" = 0 ] && break; sleep 0.1; done
    # smtp-sink counts a session when it ends, and Postfix keeps idle
    # connections for smtp_connection_cache_time_limit (2 s): wait them out,
    # so that this run's sessions are counted here and not in the next run
    sleep 2.5
    sess1=$("$PY" "$BENCH" sink-count --sessions "$T/sink.log")
    sent=$(grep -c "to=<$rcpt>.* status=sent " "$PF_OUT/maillog" || true)
    deferred=$(grep -c "to=<$rcpt>.* status=deferred " "$PF_OUT/maillog" || true)
    bounced=$(grep -c "to=<$rcpt>.* status=bounced " "$PF_OUT/maillog" || true)
    left=$(queue_files)
    if [ "$left" != 0 ]; then
        FAILURES+=("$key run $RUN: $left queue files left after the run; deleted (postsuper -d ALL)")
        script -qc "postsuper -c $PF_OUT/etc -d ALL" /dev/null >/dev/null 2>&1 || true
    fi
    RATES[$key]="${RATES[$key]:-} $(jget rate <<<"$out")"
    MS[$key]="${MS[$key]:-} $(jget secs <<<"$out")"
    CPU[$key]="${CPU[$key]:-} $(jget machine_us_per_msg <<<"$out")"
    BPCPU[$key]="${BPCPU[$key]:-} $(jget pid_us_per_msg <<<"$out")"
    SESS[$key]="${SESS[$key]:-} $((sess1 - sess0))"
    LOST[$key]=$(( ${LOST[$key]:-0} + RELAY_MSGS - ${got:-0} ))
    ERRS[$key]=$(( ${ERRS[$key]:-0} + deferred + bounced + (rc != 0) ))
    if [ "$rc" != 0 ] || [ "$deferred" != 0 ] || [ "$bounced" != 0 ]; then
        FAILURES+=("$key run $RUN: smtp-sink got ${got:-?}/$RELAY_MSGS, Postfix logged sent=$sent deferred=$deferred bounced=$bounced, smtp-source exit $(jget source_exit <<<"$out")")
        local first
        first=$(grep "to=<$rcpt>" "$PF_OUT/maillog" | grep -v ' status=sent ' | head -2)
        [ -n "$first" ] && FAILURES+=("    $first")
    fi
    say "  $key: $(jget rate <<<"$out") msgs/s ($(jget secs <<<"$out") s; sink got $got of $RELAY_MSGS; Postfix sent=$sent deferred=$deferred bounced=$bounced; $((sess1 - sess0)) sessions at the sink; machine cpu $(jget machine_us_per_msg <<<"$out") us/msg, hop process (blackpony, haproxy) $(jget pid_us_per_msg <<<"$out") us/msg)"
    if [ -n "${BREAKDOWN:-}" ]; then
        say "    by program (name, cpu us/msg, read+write syscalls/msg): $(jget by_program <<<"$out")"
    fi
}

BG_BUSY=()
bg_check() { BG_BUSY+=("$(cpu_busy 0.5)"); }

# warm-up: one message each way, so that first-run effects (page cache,
# Postfix processes, TLS session setup in tlsmgr) are not in the first round
say "warm-up (${SECONDS}s)"
"$BLACKPONY" deliver -f sender@bench.test "${BP_COMMON[@]}" --state-dir "$T/state-deliver" \
    --log "$T/deliver.log" -- user@sink.test <"$T/message" >"$T/warmup.out" 2>&1 \
    || die "warm-up blackpony deliver failed: $(cat "$T/warmup.out")"
"$DMA" -D -f sender@bench.test user@sink.test <"$T/message" >"$T/warmup-dma.out" 2>&1 \
    || die "warm-up dma failed: $(cat "$T/warmup-dma.out")"
for d in sink.test nocache.test pf-mx.test "${BP_DOMAINS[@]}"; do
    smtp-source -s 2 -m 10 -l "$SIZE" -f sender@client.test -t "warm@$d" "127.0.0.1:$SUBMIT" \
        || die "warm-up smtp-source to warm@$d failed"
done
for _ in $(seq 100); do [ "$(queue_files)" = 0 ] && break; sleep 0.1; done
sleep 0.5

# ------------------------------------------------------------------ 1. one-shot delivery
BP_DELIVER=("$BLACKPONY" deliver -f sender@bench.test "${BP_COMMON[@]}" --state-dir "$T/state-deliver"
    --log "$T/deliver.log")
MSMTP_PLAIN=(msmtp --host="$MX_SINK" --port=25 --tls=off --domain=bench.test -f sender@bench.test)
MSMTP_TLS=(msmtp --host="$MX_TLS" --port=25 --tls=on --tls-starttls=on --tls-certcheck=off
    --domain=bench.test -f sender@bench.test)
want_part 1 && say "1. one-shot delivery: $ONESHOT_MSGS sequential invocations (STARTTLS: $TLS_MSGS), $REPS rounds (${SECONDS}s)"
want_part 1 && for r in $(seq "$REPS"); do
    bg_check
    oneshot bp sink_count "$ONESHOT_MSGS" "${BP_DELIVER[@]}" -- user@sink.test
    oneshot msmtp sink_count "$ONESHOT_MSGS" "${MSMTP_PLAIN[@]}" -- user@sink.test
    dma_conf
    oneshot dma sink_count "$ONESHOT_MSGS" "$DMA" -D -f sender@bench.test user@sink.test
    oneshot bp_tls mx_count "$TLS_MSGS" "${BP_DELIVER[@]}" -- user@tls.test
    oneshot msmtp_tls mx_count "$TLS_MSGS" "${MSMTP_TLS[@]}" -- user@tls.test
    dma_conf SECURETRANSFER STARTTLS
    oneshot dma_tls mx_count "$TLS_MSGS" "$DMA" -D -f sender@bench.test user@tls.test
    dma_conf
done

# ------------------------------------------------------------------ 2. long-running transport
want_part 2 && say "2. transport: smtp-source -s $RELAY_SESSIONS -m $RELAY_MSGS -l $SIZE -> sending Postfix -> ..., $REPS rounds (${SECONDS}s)"
# shellcheck disable=SC2154
want_part 2 && for r in $(seq "$REPS"); do
    bg_check
    relay pf_relay sink.test ""
    relay pf_mx pf-mx.test ""
    relay pf_nocache nocache.test ""
    relay bp_smtp bp-smtp.test "$PID_bp_smtp"
    relay bp_lmtp bp-lmtp.test "$PID_bp_lmtp"
    # shellcheck disable=SC2154
    relay hop hop.test "$PID_hop"
    if [ -n "$BASELINE" ]; then
        # shellcheck disable=SC2154
        relay bp0_smtp bp0-smtp.test "$PID_bp0_smtp"
        # shellcheck disable=SC2154
        relay bp0_lmtp bp0-lmtp.test "$PID_bp0_lmtp"
    fi
done

say "done (${SECONDS}s)"
# ------------------------------------------------------------------ report
# Did blackpony log anything that is not an ordinary delivery record?
BP_ODD=$(grep -h -v -E ' (status=sent|delivered|listening|started|connect|disconnect|shutdown)' \
    "$T/deliver.log" "$T"/bp_smtp.log "$T"/bp_lmtp.log "$T"/bp0_*.log 2>/dev/null | head -8 || true)

med() { median <<<"${RATES[$1]:-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
row1() { # LABEL KEY
    local m
    m=$(med "$2")
    printf '%-58s %7.1f %7s %6s %6s %8s %5s %4s\n' "$1" "$m" "$(median <<<"${MS[$2]:-}")" \
        "$(ratio "$m" "$(med "$3")")" "$(ratio "$m" "$(med "$4")")" \
        "$(median <<<"${CPU[$2]:-}")" "${LOST[$2]:-0}" "${ERRS[$2]:-0}"
}
row2() { # LABEL KEY BASEKEY
    local m bpc="-"
    m=$(med "$2")
    [ -n "${4:-}" ] && bpc=$(median <<<"${BPCPU[$2]:-}")
    printf '%-58s %7.0f %7s %6s %6s %9s %8s %5s %4s\n' "$1" "$m" "$(median <<<"${MS[$2]:-}")" \
        "$(ratio "$m" "$(med "$3")")" "$(median <<<"${SESS[$2]:-}")" "$(median <<<"${CPU[$2]:-}")" "$bpc" \
        "${LOST[$2]:-0}" "${ERRS[$2]:-0}"
}

{
echo
echo "blackpony outbound benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
echo "blackpony: $BP_SRC (built $BP_BUILT, sha256 $(sha256sum "$BLACKPONY" | cut -c1-12); $(repo_head))"
[ -n "$BASELINE" ] && echo "baseline (rows b0, c0): $BASELINE_SRC (built $(date -u -r "$BASELINE_SRC" +%Y-%m-%dT%H:%MZ), sha256 $(sha256sum "$BASELINE" | cut -c1-12))"
echo "peers: $(msmtp --version | head -1), dma $(gunzip -c "$DMA_ROOT/usr/share/doc/dma/changelog.Debian.gz" 2>/dev/null | head -1 | sed 's/^dma (\([^)]*\)).*/\1/'), postfix $(postconf -d -h mail_version 2>/dev/null), $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy", $3}'), $(dnsmasq --version | head -1 | awk '{print $1, $3}')"
echo "private network namespace: dnsmasq on 127.0.0.1:53 (resolv.conf points there), MX sink.test -> smtp-sink on $MX_SINK:25,"
if [ "$DNS_TTL" -gt 0 ]; then
    echo "  DNS_TTL=$DNS_TTL: answers with TTL $DNS_TTL s, NXDOMAIN/NODATA with the zone's SOA (minimum $DNS_TTL s)"
else
    echo "  DNS_TTL=0: answers with TTL 0, NXDOMAIN/NODATA without an SOA (nothing cacheable)"
fi
echo "  MX tls.test -> Postfix on $MX_TLS:25 (smtpd_tls_security_level = may, P-256 self-signed, mail discarded)"
echo "medians of $REPS runs; lost = messages the client had accepted minus what the MX counted, err = failed"
echo "  invocations / deferred+bounced deliveries, both summed over all runs"
BG_MAX=$(printf '%s\n' "$BUSY" "${BG_BUSY[@]}" | sort -n | tail -1)
echo "other load: ${BUSY}% CPU busy at the start; between rounds (benchmark idle): ${BG_BUSY[*]/%/%}"
[ "$BG_MAX" -gt 15 ] && echo "WARNING: something else used up to ${BG_MAX}% of the CPU during the run; the figures are noisy"
echo
if want_part 1; then
printf '%-58s %7s %7s %6s %6s %8s %5s %4s\n' "1. one-shot, one process per 1 KiB message, sequential" \
    "msgs/s" "ms/msg" "/msmtp" "/dma" "cpu us/m" "lost" "err"
echo "   plaintext: $ONESHOT_MSGS messages to user@sink.test (MX smtp-sink, no STARTTLS offered)"
row1 "blackpony deliver (MX lookup via --dns, --tls-policy may)" bp msmtp dma
row1 "msmtp --host=$MX_SINK --tls=off (no MX lookup)" msmtp msmtp dma
row1 "dma -D (MX lookup via libc resolver, PORT 25, foreground)" dma msmtp dma
echo "   STARTTLS: $TLS_MSGS messages to user@tls.test (MX Postfix, STARTTLS offered, P-256 cert)"
row1 "blackpony deliver (STARTTLS, policy may: any certificate)" bp_tls msmtp_tls dma_tls
row1 "msmtp --tls=on --tls-starttls=on --tls-certcheck=off" msmtp_tls msmtp_tls dma_tls
row1 "dma -D, SECURETRANSFER + STARTTLS (MX lookup)" dma_tls msmtp_tls dma_tls
echo "   TLS the MX logged: blackpony ${TLSINFO[bp_tls]:-?}; msmtp ${TLSINFO[msmtp_tls]:-?}; dma ${TLSINFO[dma_tls]:-?}"
echo "   cpu us/m = user+system CPU of the client processes per message (getrusage of the children),"
echo "   process start included; dma was asked to deliver in the foreground (-D) and exit when done"
echo
fi
if want_part 2; then
printf '%-58s %7s %7s %6s %6s %9s %8s %5s %4s\n' "2. transport: smtp-source -s $RELAY_SESSIONS -m $RELAY_MSGS -l $SIZE -> Postfix" \
    "msgs/s" "secs" "ratio" "MX ses" "all us/m" "hop us/m" "lost" "err"
echo "   sending Postfix: default_process_limit 100, smtp/lmtp_destination_concurrency_limit 20,"
echo "   initial_destination_concurrency 5, in_flow_delay 1s (defaults), connection caching on demand"
row2 "(a) Postfix smtp -> [$MX_SINK]:25, no MX lookup" pf_relay pf_relay ""
row2 "(a') Postfix smtp, MX lookup via dnsmasq -> smtp-sink" pf_mx pf_relay ""
row2 "(a'') as (a), smtp_connection_cache_on_demand = no" pf_nocache pf_relay ""
row2 "(b) Postfix smtp -> blackpony outbound --protocol smtp" bp_smtp pf_relay x
row2 "(c) Postfix lmtp -> blackpony outbound --protocol lmtp" bp_lmtp pf_relay x
row2 "(h) Postfix smtp -> haproxy (mode tcp) -> smtp-sink" hop pf_relay x
if [ -n "$BASELINE" ]; then
    row2 "(b0) as (b), the BASELINE build" bp0_smtp pf_relay x
    row2 "(c0) as (c), the BASELINE build" bp0_lmtp pf_relay x
fi
echo "   secs = from the first submission until smtp-sink counted all $RELAY_MSGS; ratio vs (a); MX ses = SMTP"
echo "   sessions smtp-sink saw (Postfix's smtp client and both blackpony modes reuse idle connections); all us/m = CPU"
echo "   of the whole machine per message (Postfix, smtp-source, smtp-sink, dnsmasq, blackpony);"
echo "   hop us/m = the process between Postfix and smtp-sink alone (/proc/PID/stat): blackpony outbound in (b),(c),"
echo "   haproxy in (h); (b),(c) look up the MX per new MX session"
echo "   (h) is the hop floor: an extra hop between Postfix and the MX that parses nothing and only moves"
echo "   bytes; read (b) and (c) against it, in this run (its spread between runs: bench/README.md, Floors)"
# per-round ratios: each round's row against that round's (a), median and
# spread, and whether (b), (c) stay within (h)'s spread (issue 12's aim read
# against the hop floor and the round noise of the Postfix pipeline)
round_ratios() { # KEY : one ratio per round, KEY's rate over (a)'s in the same round
    local -a a k
    read -ra a <<<"${RATES[pf_relay]:-}"
    read -ra k <<<"${RATES[$1]:-}"
    local i
    for i in "${!k[@]}"; do ratio "${k[$i]}" "${a[$i]:-0}"; echo; done
}
minmax() { sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%s-%s", lo, hi}'; }
echo "   per-round ratios to (a) of the same round (median, min-max over $REPS rounds):"
HLO=$(round_ratios hop | sort -g | head -1); HHI=$(round_ratios hop | sort -g | tail -1)
for k in bp_smtp:b bp_lmtp:c hop:h ${BASELINE:+bp0_smtp:b0 bp0_lmtp:c0}; do
    rr=$(round_ratios "${k%%:*}")
    inside=$(awk -v lo="$HLO" -v hi="$HHI" '$1 < lo {b++} $1 > hi {a++} END {printf "%d below, %d within, %d above", b, NR - a - b, a}' <<<"$rr")
    printf '     (%s)/(a) %s (%s), rounds >= 1.00: %s of %s; rounds against (h)'"'"'s min-max: %s\n' "${k#*:}" \
        "$(tr '\n' ' ' <<<"$rr" | median)" "$(minmax <<<"$rr")" \
        "$(awk '$1 >= 1 {n++} END {print n+0}' <<<"$rr")" "$(grep -c . <<<"$rr")" "$inside"
done
echo "     rounds: $(for k in pf_relay bp_smtp bp_lmtp hop; do printf '%s [%s] ' "$k" "${RATES[$k]# }"; done)"
echo
fi
if [ ${#FAILURES[@]} -gt 0 ]; then
    echo "FAILURES:"
    printf '  %s\n' "${FAILURES[@]}"
else
    echo "no failures: every invocation exited 0 (blackpony with a 2.0.0 status line), no deferrals or"
    echo "bounces, and the MX counted every message"
fi
if [ -n "$BP_ODD" ]; then
    echo "blackpony logged (first lines that are not delivery records):"
    printf '%s\n' "$BP_ODD" | sed 's/^/  /'
fi
}
