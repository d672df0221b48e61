#!/usr/bin/env bash
# The one test command of blackpony:
#
#   sudo ./scripts/test.sh        (or ./scripts/test.sh as root)
#
# 1. installs what the tests need (scripts/install-deps.sh, fast when nothing is missing),
# 2. builds everything once in release mode,
# 3. runs the Rust tests (cargo test --release, same target dir),
# 4. runs the real-peer interop suite (interop/, pytest) against the release binary:
#    private Postfix instances, swaks, smtp-source, openssl s_client, all on 127.0.0.0/8.
#
# Exits non-zero if anything fails. BLACKPONY_BIN overrides the binary the interop suite uses;
# extra arguments go to pytest (e.g. ./scripts/test.sh -k smuggling).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

./scripts/install-deps.sh

echo "== cargo build --release --all-targets"
cargo build --release --all-targets

status=0
echo "== cargo test --release"
cargo test --release || status=1

echo "== interop suite (python3 -m pytest -q interop)"
export BLACKPONY_BIN="${BLACKPONY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/blackpony}"
python3 -m pytest -q interop "$@" || status=1

if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (see above)" >&2
fi
exit "$status"
