#!/usr/bin/env bash
# The blackpony extension (XPONY: Noise XX + framing) against TLS 1.3, in one
# run: handshakes per second and bulk throughput, in memory (crypto and
# framing only, no sockets). Usage: bench/pony.sh   (BENCH_SECONDS=2 per row)
# It builds and runs an example of the crate, so it runs in a checkout: the one
# it sits in, or REPO=path when run from a copy of bench/.
set -euo pipefail
cd "${REPO:-$(dirname "$0")/..}"
[ -f Cargo.toml ] || { echo "pony.sh: $(pwd) is not a blackpony checkout; set REPO=path" >&2; exit 1; }
cargo run --release --quiet --example pony_bench
