#!/usr/bin/env bash
# End-to-end bench of LLM inspection: streamed Chat Completions through a sidecar that inspects
# them (`protocol: openai`: SSE parsed, GenAI metrics, tool-call checks) against one that passes
# them through as plain HTTP (`protocol: none`, the foundation's data plane), side by side.
#
#   bash benches/llm_load.sh        # ROUNDS=5 rounds of DURATION=5 s runs; results in bench-results/
#
# Layout (2-core machine): both sidecars on core 1 (one tokio worker each); the simulated provider
# and the load generator on core 0.
# - TTFT: open loop at RATE=1000 streams/s to each of plain and inspect at once, requests
#   alternating between them (so that both meet the same moments of a noisy machine), and the
#   provider direct on its own at RATE for reference; TTFT_CHUNKS content chunks (default 1: only
#   the first matters here, and fewer events keep core 0 out of saturation), 20 ms to the first,
#   2 ms apart; time from sending to the first content chunk.
# - Throughput: closed loop (64 concurrent streams of 50 chunks, no delays) for DURATION; streams/s
#   and the sidecar's own CPU time per stream (utime+stime from /proc), plain vs inspect.
# Each round runs the scenarios back to back; the summary takes medians over rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-1000}
OUT=${OUT:-bench-results}
SLOW_PORT=18180 FAST_PORT=18183 PLAIN_PORT=18181 INSPECT_PORT=18182
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream --example llm_load

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

SIM_FIRST_CHUNK_MS=20 SIM_CHUNK_MS=2 SIM_CHUNKS=${TTFT_CHUNKS:-1} TOKIO_WORKER_THREADS=1 taskset -c 0 \
  target/release/examples/sim_upstream 127.0.0.1:$SLOW_PORT >/dev/null &
PIDS+=($!)
SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 SIM_CHUNKS=50 TOKIO_WORKER_THREADS=1 taskset -c 0 \
  target/release/examples/sim_upstream 127.0.0.1:$FAST_PORT >/dev/null &
PIDS+=($!)

sidecar() { # name port protocol admin-port
  cat >"$OUT/llm-$1.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$4}
listeners:
  - {name: slow, bind: 127.0.0.1:$2, role: llm, route: slow}
  - {name: fast, bind: 127.0.0.1:$(($2 + 10)), role: llm, route: fast}
routes:
  slow: {upstreams: [slow]}
  fast: {upstreams: [fast]}
upstreams:
  slow: {url: http://127.0.0.1:$SLOW_PORT, protocol: $3}
  fast: {url: http://127.0.0.1:$FAST_PORT, protocol: $3}
YAML
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/llm-$1.yaml" 2>"$OUT/llm-$1.log" &
  PIDS+=($!)
  echo $! >"$OUT/llm-$1.pid"
}
sidecar plain $PLAIN_PORT none 18291
sidecar inspect $INSPECT_PORT openai 18292
for p in $SLOW_PORT $FAST_PORT $PLAIN_PORT $INSPECT_PORT $((PLAIN_PORT + 10)) $((INSPECT_PORT + 10)); do wait_port "$p"; done
sleep 0.5

declare -A SLOW=([direct]=$SLOW_PORT [plain]=$PLAIN_PORT [inspect]=$INSPECT_PORT)
declare -A FAST=([plain]=$((PLAIN_PORT + 10)) [inspect]=$((INSPECT_PORT + 10)))
cpu_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$OUT/llm-$1.pid")/stat"; }

echo "warm-up"
url() { echo "http://127.0.0.1:${SLOW[$1]}/v1/chat/completions"; }
BOTH="$(url plain),$(url inspect)"
taskset -c 0 target/release/examples/llm_load "$BOTH" 200 1 >/dev/null
for round in $(seq "$ROUNDS"); do
  echo "round $round, ttft at $RATE/s: direct"
  taskset -c 0 target/release/examples/llm_load "$(url direct)" "$RATE" "$DURATION" >"$OUT/llm-ttft-r$round-direct.json"
  echo "round $round, ttft at $RATE/s each: plain and inspect interleaved"
  taskset -c 0 target/release/examples/llm_load "$BOTH" "$RATE" "$DURATION" >"$OUT/llm-ttft-r$round.jsonl"
  sed -n 1p "$OUT/llm-ttft-r$round.jsonl" >"$OUT/llm-ttft-r$round-plain.json"
  sed -n 2p "$OUT/llm-ttft-r$round.jsonl" >"$OUT/llm-ttft-r$round-inspect.json"
  for t in plain inspect; do
    echo "round $round, max streams: $t"
    before=$(cpu_ticks "$t")
    CONCURRENCY=64 taskset -c 0 target/release/examples/llm_load "http://127.0.0.1:${FAST[$t]}/v1/chat/completions" 0 "$DURATION" \
      >"$OUT/llm-max-r$round-$t.json"
    echo "{\"ticks\": $(($(cpu_ticks "$t") - before))}" >"$OUT/llm-cpu-r$round-$t.json"
  done
done

python3 - "$OUT" "$ROUNDS" "$RATE" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/llm-summary.md"
import json, statistics, sys
out, rounds, rate, hz = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
med = statistics.median
load = lambda kind, r, t: json.load(open(f"{out}/llm-{kind}-r{r}-{t}.json"))
R = range(1, rounds + 1)
print(f"Medians over {rounds} rounds; each round runs the targets back to back.\n")
print(f"| TTFT at {rate} streams/s | p50 ms | p99 ms | p99.9 ms | added p50 µs | added p99 µs | streams | errors |")
print("|---|---|---|---|---|---|---|---|")
for t in ["direct", "plain", "inspect"]:
    d = [load("ttft", r, t) for r in R]
    b = [load("ttft", r, "direct") for r in R]
    add = lambda p: med((x[p] - y[p]) * 1000 for x, y in zip(d, b))
    print(f"| {t} | {med(x['p50_ms'] for x in d):.3f} | {med(x['p99_ms'] for x in d):.3f} | {med(x['p999_ms'] for x in d):.3f} | "
          f"{add('p50_ms'):+.0f} | {add('p99_ms'):+.0f} | {sum(x['n'] for x in d)} | {sum(x['errors'] for x in d)} |")
ins = [load("ttft", r, "inspect") for r in R]; pl = [load("ttft", r, "plain") for r in R]
per_round = [(a["p99_ms"] - b["p99_ms"]) * 1000 for a, b in zip(ins, pl)]
inspect_added_p99 = med(per_round)
print()
print("| max streams (50 chunks, 64 concurrent) | streams/s | sidecar CPU µs per stream |")
print("|---|---|---|")
per = {}
for t in ["plain", "inspect"]:
    d = [load("max", r, t) for r in R]
    cpu = [load("cpu", r, t)["ticks"] / hz * 1e6 / max(1, x["n"]) for r, x in zip(R, d)]
    per[t] = ([x["streams_per_s"] for x in d], cpu)
    print(f"| {t} | {med(per[t][0]):.0f} | {med(cpu):.1f} |")
ratios = [i / p for i, p in zip(per["inspect"][0], per["plain"][0])]
cpu_ratios = [i / p for i, p in zip(per["inspect"][1], per["plain"][1])]
print()
r = med(ratios)
print(f"- streamed throughput inspect/plain per round: {', '.join(f'{x:.3f}' for x in ratios)}; median {r:.3f} "
      f"(target: inspection costs <= 10%, ratio >= 0.90: {'met' if r >= 0.9 else 'NOT met'})")
print(f"- sidecar CPU per stream inspect/plain per round: {', '.join(f'{x:.3f}' for x in cpu_ratios)}; median {med(cpu_ratios):.3f}")
print(f"- added p99 TTFT of inspection (inspect minus plain) per round: {', '.join(f'{x:+.0f}' for x in per_round)} µs; "
      f"median {inspect_added_p99:+.0f} µs "
      f"(target <= 50 µs: {'met' if inspect_added_p99 <= 50 else 'NOT met'})")
PY
