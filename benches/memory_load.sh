#!/usr/bin/env bash
# Memory under a thousand concurrent large requests: does the body budget (memory.max_held)
# keep the sidecar under the memory limit the deployment gives it (deploy/kubernetes/deployment.yaml)?
#
#   bash benches/memory_load.sh     # N=1000 requests of SIZE=1MiB at once; results in bench-results/
#
# The same sidecar config twice, side by side: with the default budget (128 MiB) and with the
# budget out of the way (64 GiB). The route replays (two upstreams, max_replay_body 1MiB), so
# each request's body is kept while the upstream thinks (HOLD_MS). The load (examples/
# memory_load.rs) sends every request at once and counts the answers; the sidecar's peak
# resident memory is its VmHWM in /proc after the run. ROUNDS rounds; medians reported.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
SIZE=${SIZE:-1048576}
HOLD_MS=${HOLD_MS:-3000}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-results}
UP_PORT=18380 PROXY_PORT=18381 ADMIN_PORT=18390
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example memory_load

limit=$(grep -A3 'limits:' deploy/kubernetes/deployment.yaml | grep -o 'memory: [0-9]*Mi' | head -1 | grep -o '[0-9]*')
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

config() {
    cat <<YAML
agent: bench
admin: {bind: 127.0.0.1:$ADMIN_PORT}
listeners:
  - {name: egress, bind: 127.0.0.1:$PROXY_PORT, role: llm, route: llm, limits: {max_connections: 4096}}
routes:
  llm: {upstreams: [a, b], max_replay_body: 1MiB}
upstreams:
  a: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
  b: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
memory: {max_held: $1}
YAML
}

declare -A peaks
for round in $(seq "$ROUNDS"); do
    for mode in budget unbounded; do
        held=128MiB
        [ "$mode" = unbounded ] && held=64GiB
        config "$held" >"$OUT/memory-$mode.yaml"
        target/release/sloguard run --config "$OUT/memory-$mode.yaml" 2>/dev/null &
        pid=$!
        PIDS+=($pid)
        wait_port $PROXY_PORT
        result=$(target/release/examples/memory_load "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" \
            127.0.0.1:$UP_PORT "$N" "$SIZE" "$HOLD_MS")
        hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
        kill $pid; wait $pid 2>/dev/null || true
        echo "round $round $mode: peak RSS $((hwm / 1024)) MiB; $result"
        peaks[$mode]+="$((hwm / 1024)) "
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
budget=$(echo "${peaks[budget]}" | median)
unbounded=$(echo "${peaks[unbounded]}" | median)
{
    echo "# Memory under $N concurrent requests of $SIZE bytes (replayed route, upstream holds ${HOLD_MS} ms)"
    echo
    echo "| sidecar | peak RSS, median of $ROUNDS (MiB) | deploy limit (MiB) |"
    echo "|---|---|---|"
    echo "| memory.max_held 128MiB (default) | $budget | $limit |"
    echo "| budget out of the way (64GiB) | $unbounded | $limit |"
} | tee "$OUT/memory-summary.md"
if [ "$budget" -ge "$limit" ]; then
    echo "the budgeted sidecar went past the deploy memory limit" >&2
    exit 1
fi
