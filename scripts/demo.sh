#!/usr/bin/env bash
# Try blackpony inbound in one command (as root):
#
#   sudo ./scripts/demo.sh
#
# Installs the dependencies, builds the release binary, starts a private Postfix on loopback
# (free ports, a temporary directory, PROXY v2), starts `blackpony inbound` in front of it,
# sends one message with swaks --tls through blackpony, and prints the swaks transcript,
# blackpony's log, the delivered mailbox file and its top header lines (blackpony's
# Received: trace header). Everything it started is stopped when it exits.
# The Postfix/blackpony setup is the test suite's own (interop/peers.py, interop/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

./scripts/install-deps.sh
cargo build --release
export BLACKPONY_BIN="${BLACKPONY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/blackpony}"

demo_pid=""
stop_demo() {
  # interop.demo stops Postfix and blackpony itself on exit, SIGTERM or SIGHUP; this only
  # makes sure it gets the signal when this script is interrupted.
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
  fi
}
trap stop_demo EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 -m interop.demo "$@" &
demo_pid=$!
wait "$demo_pid"
