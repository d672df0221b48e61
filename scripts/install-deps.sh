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
  nsd ldnsutils           # a DNSSEC-signed zone for the XPONY key tests (nsd serves it,
                          # ldns-keygen/ldns-signzone make it)
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

# pytest for whichever python3 is first on PATH.
if ! python3 -c 'import pytest' 2>/dev/null; then
  py="$(command -v python3)"
  if [ "$(readlink -f "$py")" = "$(readlink -f /usr/bin/python3)" ]; then
    # Debian's own Python is externally managed (PEP 668): use its package.
    need_root python3-pytest
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pytest \
      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pytest; }
  else
    python3 -m pip install --quiet --disable-pip-version-check pytest
  fi
  python3 -c 'import pytest' || { echo "install-deps.sh: pytest still missing" >&2; exit 1; }
fi

# Exim, a second MTA that hands mail to blackpony (interop/test_outbound.py). As a package
# it conflicts with postfix, so its binary is unpacked (dpkg -x) into a cache directory and
# run from there with a private config; it only needs its compiled-in user to exist.
EXIM_ROOT="${BLACKPONY_EXIM_ROOT:-/var/cache/blackpony-interop/exim4}"
if [ ! -x "$EXIM_ROOT/usr/sbin/exim4" ] || ! getent passwd Debian-exim >/dev/null; then
  need_root "exim4 (unpacked into $EXIM_ROOT)"
  if ! getent passwd Debian-exim >/dev/null; then
    adduser --system --group --home /var/spool/exim4 --no-create-home --allow-bad-names \
      --quiet Debian-exim
  fi
  if [ ! -x "$EXIM_ROOT/usr/sbin/exim4" ]; then
    dl="$(mktemp -d)"
    if getent passwd _apt >/dev/null; then chown _apt "$dl"; fi  # apt downloads as _apt
    ( cd "$dl" && { apt-get download exim4-daemon-light \
        || { apt-get update && apt-get download exim4-daemon-light; }; } )
    mkdir -p "$EXIM_ROOT"
    dpkg -x "$dl"/exim4-daemon-light_*.deb "$EXIM_ROOT"
    rm -rf "$dl"
  fi
  [ -x "$EXIM_ROOT/usr/sbin/exim4" ] || { echo "install-deps.sh: exim4 unpack failed" >&2; exit 1; }
  echo "install-deps.sh: exim4 unpacked into $EXIM_ROOT"
fi

echo "install-deps.sh: all dependencies present"
