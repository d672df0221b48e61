#!/usr/bin/env bash
# The blackpony extension (XPONY: Noise XX + framing) against TLS 1.3, in one
# run: handshakes per second and bulk throughput, in memory (crypto and
# framing only, no sockets). Usage: bench/pony.sh   (BENCH_SECONDS=2 per row)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet --example pony_bench
