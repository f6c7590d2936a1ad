#!/usr/bin/env bash
# The fault soak: the release build of sloguard under open-loop mixed traffic on every role
# (agent; llm streamed and not, OpenAI and Anthropic; a fallback chain with a cache) while its
# upstreams inject every fault class at random (refused connections, resets mid-body, hangs,
# stalls mid-stream, malformed JSON and SSE, error events in 200 streams, 429 storms with
# Retry-After, 5xx bursts, early keep-alive closes; gzip and Content-Length bodies), and its config
# is reloaded every 10 s (two valid configs and an invalid one, by file change, SIGHUP and the
# admin call). It fails unless every request was answered and counted exactly once, nothing
# panicked or restarted, memory and file descriptors stayed flat, and the kill switch never
# tripped (see examples/soak/main.rs).
#
#   bash benches/soak.sh            # SOAK_S=600 seconds at RATE=200 requests/s
#   SOAK_S=60 bash benches/soak.sh  # what CI runs
#
# SOAK_H2 (default 0.15) is the share of requests sent over h2c; SOAK_LOG=h2=debug logs why the
# clients' HTTP/2 library reset a stream (a malformed answer), for digging into a failure.
#
# Results: bench-results/soak-summary.md; the sidecar's log and configs in bench-results/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_S=${SOAK_S:-600}
RATE=${RATE:-200}
OUT=${OUT:-bench-results}
# The sidecar alone, as it ships: built in one go with the example it would get the
# dev-dependencies' features (tokio's test-util clock).
cargo build --locked --release --bin sloguard
cargo build --locked --release --example soak
target/release/examples/soak target/release/sloguard "$SOAK_S" "$RATE" "$OUT"
