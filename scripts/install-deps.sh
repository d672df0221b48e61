#!/usr/bin/env bash
# Install what blackpony's tests and demo need on Debian 12 (Rust/cargo assumed present).
# Idempotent: apt runs only when a package is missing, so repeat runs take a second.
#
#   sudo ./scripts/install-deps.sh
#
# Postfix is installed with "No configuration" and without starting any service: the tests
# and the demo run their own private Postfix instances on loopback (interop/peers.py).
set -euo pipefail

PACKAGES=(
  postfix                 # the backend MTA; also ships smtp-source / smtp-sink
  swaks                   # SMTP test client
  libnet-ssleay-perl      # swaks --tls
  libio-socket-ssl-perl   # swaks --tls
  openssl                 # openssl s_client -starttls smtp
  bsdutils                # script(1): postfix(1) reports errors only to a terminal
  procps                  # ps/kill for humans poking at a run
  ca-certificates
  gcc libc6-dev           # C compiler for the ring crate
  python3                 # the interop suite (pytest)
  dnsmasq-base            # the outbound tests' fake internet: MX records for *.test
  libidn12                # needed by the unpacked exim4 binary (see below)
  libmariadb3 libspf2-2   # needed by the unpacked exim4-daemon-heavy binary (see below)
  libevent-2.1-7          # needed by the unpacked OpenSMTPD (see below)
  python3-aiosmtpd        # an SMTP server on a Unix socket (inbound --backend unix:)
  python3-jsonschema      # RFC 8460 report schema check (interop/test_tlsrpt.py)
  python3-dkim python3-nacl # dkimpy checks the DKIM signature of TLS report mail (RSA and
                          # Ed25519) as a receiver does (interop/test_tlsrpt.py)
  age                     # the reference age CLI: sealed spool files must decrypt with it
  nsd ldnsutils           # a DNSSEC-signed zone for the XPONY key tests (nsd serves it,
                          # ldns-keygen/ldns-signzone make it)
  groff-base man-db       # the generated man pages are rendered in cargo test (groff) and
                          # by the package test (man)
  lintian                 # the Debian package is checked with it (interop/test_package.py)
  m4                      # sendmail's .cf generator (interop/sendmail_mta.py)
  chromium                # renders `blackpony stats --html` headless (interop/test_stats.py)
  libwrap0 liblockfile1   # needed by the unpacked sendmail and its mail.local (see below)
  nginx-light             # the HTTPS policy host of the MTA-STS tests (interop/test_mta_sts.py)
  dovecot-lmtpd           # an LMTP server for fetch --deliver-to lmtp: (interop/test_fetch.py)
  liburing-dev            # bench/floor_uring.c, the io_uring floor relay of bench/inbound.sh
  libssl-dev              # bench/smtpload.c and bench/floor_tls.c (the STARTTLS load generator and floor)
)

missing=()
for p in "${PACKAGES[@]}"; do
  # No pipe into grep -q here: under pipefail, grep leaving early can SIGPIPE dpkg and make
  # an installed package look missing.
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: must run as root to install: $*" >&2
    exit 1
  fi
}

if [ "${#missing[@]}" -gt 0 ]; then
  need_root "${missing[*]}"
  echo "install-deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No service may start during the install (the system Postfix stays down).
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  cleanup() { if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
  trap cleanup EXIT
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
  cleanup
  created_policy=""
  trap - EXIT
fi

# Python modules the interop suite imports, for whichever python3 is first on PATH: pytest,
# jsonschema (test_tlsrpt.py validates reports against the RFC 8460 schema), dkim and nacl
# (test_tlsrpt.py verifies the reports' DKIM signatures, RSA and Ed25519, with dkimpy).
# Each entry: module:Debian package:PyPI package.
for entry in pytest:python3-pytest:pytest jsonschema:python3-jsonschema:jsonschema \
             dkim:python3-dkim:dkimpy nacl:python3-nacl:pynacl; do
  IFS=: read -r module deb pip <<<"$entry"
  if ! python3 -c "import $module" 2>/dev/null; then
    py="$(command -v python3)"
    if [ "$(readlink -f "$py")" = "$(readlink -f /usr/bin/python3)" ]; then
      # Debian's own Python is externally managed (PEP 668): use its package.
      need_root "$deb"
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$deb" \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$deb"; }
    else
      python3 -m pip install --quiet --disable-pip-version-check "$pip"
    fi
    python3 -c "import $module" || { echo "install-deps.sh: $module still missing" >&2; exit 1; }
  fi
done

# unpack_deb PACKAGE ROOT BINARY: download a Debian package and unpack it (dpkg -x, no
# maintainer scripts, nothing configured or started) into ROOT, unless ROOT/BINARY is there.
# For MTAs that conflict with postfix as packages: the tests run them from ROOT.
unpack_deb() {
  local pkg="$1" root="$2" bin="$3" dl
  if [ -x "$root/$bin" ]; then return 0; fi
  need_root "$pkg (unpacked into $root)"
  dl="$(mktemp -d)"
  if getent passwd _apt >/dev/null; then chown _apt "$dl"; fi  # apt downloads as _apt
  ( cd "$dl" && { apt-get download "$pkg" || { apt-get update && apt-get download "$pkg"; }; } )
  mkdir -p "$root"
  dpkg -x "$dl"/"$pkg"_*.deb "$root"
  rm -rf "$dl"
  [ -x "$root/$bin" ] || { echo "install-deps.sh: $pkg unpack failed" >&2; exit 1; }
  echo "install-deps.sh: $pkg unpacked into $root"
}

# Exim, a second MTA that hands mail to blackpony (interop/test_outbound.py). As a package
# it conflicts with postfix, so its binary is unpacked (dpkg -x) into a cache directory and
# run from there with a private config; it only needs its compiled-in user to exist.
EXIM_ROOT="${BLACKPONY_EXIM_ROOT:-/var/cache/blackpony-interop/exim4}"
if ! getent passwd Debian-exim >/dev/null; then
  need_root "the Debian-exim user"
  adduser --system --group --home /var/spool/exim4 --no-create-home --allow-bad-names \
    --quiet Debian-exim
fi
unpack_deb exim4-daemon-light "$EXIM_ROOT" usr/sbin/exim4
# exim4-daemon-heavy: the Exim build with PROXY protocol support (hosts_proxy), the backend
# of `blackpony inbound --identity proxy-v2/proxy-v1` in interop/test_inbound_mtas.py.
# Unpacked next to -light (same version, same compiled-in user).
EXIM_HEAVY_ROOT="${BLACKPONY_EXIM_HEAVY_ROOT:-/var/cache/blackpony-interop/exim4-heavy}"
unpack_deb exim4-daemon-heavy "$EXIM_HEAVY_ROOT" usr/sbin/exim4

# OpenSMTPD, a backend with `listen on ... proxy-v2` (interop/test_inbound_mtas.py). It
# conflicts with postfix too: unpacked, and run in a private mount namespace where its
# compiled-in paths (/var/spool/smtpd, /usr/libexec/opensmtpd, ...) are the test's own. Its
# compiled-in users are Debian's opensmtpd (daemon) and opensmtpq (queue), as its postinst
# creates them.
OPENSMTPD_ROOT="${BLACKPONY_OPENSMTPD_ROOT:-/var/cache/blackpony-interop/opensmtpd}"
for name in opensmtpd opensmtpq; do
  if ! getent passwd "$name" >/dev/null; then
    need_root "the $name user"
    getent group "$name" >/dev/null || addgroup --system --quiet "$name"
    adduser --system --home /var/lib/opensmtpd/empty --no-create-home --disabled-password \
      --ingroup "$name" --quiet "$name"
  fi
done
unpack_deb opensmtpd "$OPENSMTPD_ROOT" usr/sbin/smtpd

# sendmail 8.17 (interop/test_sendmail.py): sendmail-bin conflicts with postfix, so it is
# unpacked, with sendmail-cf (the m4 files its .cf is generated from) in the same tree, and
# run with a .cf whose every path is the test's own, in a private mount and UTS namespace
# (its own host name and /var/mail; interop/sendmail_mta.py).
SENDMAIL_ROOT="${BLACKPONY_SENDMAIL_ROOT:-/var/cache/blackpony-interop/sendmail}"
unpack_deb sendmail-bin "$SENDMAIL_ROOT" usr/libexec/sendmail/sendmail
unpack_deb sendmail-cf "$SENDMAIL_ROOT" usr/share/sendmail/cf/sh/makeinfo.sh

echo "install-deps.sh: all dependencies present"
