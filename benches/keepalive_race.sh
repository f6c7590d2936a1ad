#!/usr/bin/env bash
# The upstream keep-alive race, as it happens in production: an upstream closes a connection it
# has kept idle for a while, and a request the sidecar writes on it at that moment fails. Two
# upstreams (examples/keepalive_race.rs), each in front of its own sidecar:
#
#   close300  closes after 300 ms idle, says nothing; the sidecar's pool.idle_timeout is 200ms
#   timeout1  closes after 1 s idle and says `Keep-Alive: timeout=1`; the sidecar's defaults
#
# and one keep-alive client per sidecar sending N requests, each 300 ms (1 s) ± 4 ms after the
# last answer, so that each lands near the moment the upstream closes. Every request must
# succeed. BASELINE=path/to/an/older/sloguard runs the same through that build too, side by side
# (without the pool key, which it does not know).
#
#   bash benches/keepalive_race.sh      # N=300; results in bench-results/keepalive-summary.md
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example keepalive_race

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

builds=("current:target/release/sloguard")
[ -n "${BASELINE:-}" ] && builds+=("baseline:$BASELINE")

port=18500
runs=()
for build in "${builds[@]}"; do
    name=${build%%:*} bin=${build#*:}
    for case in close300 timeout1; do
        up=$port proxy=$((port + 1)) admin=$((port + 2))
        port=$((port + 10))
        pool=""
        if [ "$case" = close300 ] && [ "$name" = current ]; then pool=", pool: {idle_timeout: 200ms}"; fi
        cat >"$OUT/keepalive-$name-$case.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$admin}
listeners:
  - {name: inbound, bind: 127.0.0.1:$proxy, role: agent, route: agent}
routes:
  agent: {upstreams: [agent]}
upstreams:
  agent: {url: 'http://127.0.0.1:$up'$pool}
YAML
        "$bin" run --config "$OUT/keepalive-$name-$case.yaml" 2>/dev/null &
        PIDS+=($!)
        wait_port $proxy
        close=300 said=0
        if [ "$case" = timeout1 ]; then close=1000 said=1; fi
        target/release/examples/keepalive_race 127.0.0.1:$up $close $said "http://127.0.0.1:$proxy/" "$N" \
            >"$OUT/keepalive-$name-$case.txt" &
        runs+=($!)
    done
done
for r in "${runs[@]}"; do wait "$r"; done
{
    echo "# The upstream keep-alive race: failed requests of $N, each sent as the upstream closes"
    echo
    echo "| build | upstream closes after 300 ms (pool.idle_timeout 200ms on the current build) | upstream says Keep-Alive: timeout=1 (defaults) |"
    echo "|---|---|---|"
    for build in "${builds[@]}"; do
        name=${build%%:*}
        row="| $name"
        for case in close300 timeout1; do
            row="$row | $(cat "$OUT/keepalive-$name-$case.txt")"
        done
        echo "$row |"
    done
} | tee "$OUT/keepalive-summary.md"
