#!/usr/bin/env bash
# End-to-end bench of safety on streams: streamed Chat Completions through three sidecars that
# all read the LLM output (`protocol: openai`), side by side: `off` (no `safety`), `record`
# (every built-in detector, 20 regexes, 1,000 keywords, action record) and `block` (the same,
# action block: the stream is held back by the detectors' overlap window).
#
#   bash benches/safety_load.sh     # ROUNDS=5 rounds of DURATION=5 s runs; results in bench-results/
#
# Layout (2-core machine): the three sidecars on core 1 (one tokio worker each); the simulated
# provider and the load generator on core 0.
# - Latency: open loop at RATE=300 streams/s to each sidecar at once, requests alternating
#   between them (so that all meet the same moments of a noisy machine); CHUNKS=50 content chunks
#   of about 8 bytes of text, 20 ms to the first, 2 ms apart: time to the first content chunk
#   (TTFT) and to the stream's end, as the agent sees them.
# - CPU: closed loop (64 concurrent streams of 50 chunks, no delays) for DURATION per sidecar;
#   the sidecar's own CPU time per stream (utime+stime from /proc).
# The summary takes medians over rounds; "added" is against `off`, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-300}
CHUNKS=${CHUNKS:-50}
OUT=${OUT:-bench-results}
SLOW_PORT=18380 FAST_PORT=18381
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

SIM_FIRST_CHUNK_MS=20 SIM_CHUNK_MS=2 SIM_CHUNKS=$CHUNKS TOKIO_WORKER_THREADS=1 taskset -c 0 \
  target/release/examples/sim_upstream 127.0.0.1:$SLOW_PORT >/dev/null &
PIDS+=($!)
SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 SIM_CHUNKS=50 TOKIO_WORKER_THREADS=1 taskset -c 0 \
  target/release/examples/sim_upstream 127.0.0.1:$FAST_PORT >/dev/null &
PIDS+=($!)

REGEXES=""
for i in $(seq 1 20); do REGEXES+="    - {name: rule$i, regex: 'ticket-${i}[0-9]{4}-[a-z]{3}'}"$'\n'; done
KEYWORDS=$(seq -f "term-%04g" 0 999 | paste -sd, -)

declare -A PORT=([off]=18381 [record]=18382 [block]=18383)
sidecar() { # name action(or empty) admin-port
  local port=${PORT[$1]}
  {
    cat <<YAML
agent: bench
admin: {bind: 127.0.0.1:$3}
listeners:
  - {name: slow, bind: 127.0.0.1:$((port + 100)), role: llm, route: slow}
  - {name: fast, bind: 127.0.0.1:$((port + 200)), role: llm, route: fast}
routes:
  slow: {upstreams: [slow]}
  fast: {upstreams: [fast]}
upstreams:
  slow: {url: http://127.0.0.1:$SLOW_PORT, protocol: openai}
  fast: {url: http://127.0.0.1:$FAST_PORT, protocol: openai}
YAML
    if [ -n "$2" ]; then
      cat <<YAML
safety:
  apply_to: [llm]
  action: $2
  detectors:
    - builtin: pii_email
    - builtin: pii_credit_card
    - builtin: pii_us_ssn
    - builtin: secrets
$REGEXES    - {name: banned, keywords: [$KEYWORDS]}
YAML
    fi
  } >"$OUT/safety-$1.yaml"
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/safety-$1.yaml" 2>"$OUT/safety-$1.log" &
  PIDS+=($!)
  echo $! >"$OUT/safety-$1.pid"
}
sidecar off "" 18391
sidecar record record 18392
sidecar block block 18393
for t in off record block; do wait_port $((PORT[$t] + 100)); wait_port $((PORT[$t] + 200)); done
sleep 0.5
cpu_ticks() { awk '{print $14 + $15}' "/proc/$(cat "$OUT/safety-$1.pid")/stat"; }
url() { echo "http://127.0.0.1:$((PORT[$1] + $2))/v1/chat/completions"; }
ALL="$(url off 100),$(url record 100),$(url block 100)"

echo "warm-up"
taskset -c 0 target/release/examples/llm_load "$ALL" 100 1 >/dev/null
for round in $(seq "$ROUNDS"); do
  echo "round $round, streams at $RATE/s each: off, record and block interleaved"
  taskset -c 0 target/release/examples/llm_load "$ALL" "$RATE" "$DURATION" >"$OUT/safety-lat-r$round.jsonl"
  i=1; for t in off record block; do sed -n ${i}p "$OUT/safety-lat-r$round.jsonl" >"$OUT/safety-lat-r$round-$t.json"; i=$((i + 1)); done
  for t in off record block; do
    echo "round $round, max streams: $t"
    before=$(cpu_ticks "$t")
    CONCURRENCY=64 taskset -c 0 target/release/examples/llm_load "$(url "$t" 200)" 0 "$DURATION" >"$OUT/safety-max-r$round-$t.json"
    echo "{\"ticks\": $(($(cpu_ticks "$t") - before))}" >"$OUT/safety-cpu-r$round-$t.json"
  done
done

python3 - "$OUT" "$ROUNDS" "$RATE" "$CHUNKS" "$(getconf CLK_TCK)" <<'PY' | tee "$OUT/safety-summary.md"
import json, statistics, sys
out, rounds, rate, chunks, hz = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
med = statistics.median
load = lambda kind, r, t: json.load(open(f"{out}/safety-{kind}-r{r}-{t}.json"))
R = range(1, rounds + 1)
print(f"Medians over {rounds} rounds; off, record and block interleaved in one run per round.\n")
print(f"| {rate} streams/s each, {chunks} chunks | TTFT p50 ms | TTFT p99 ms | end p50 ms | end p99 ms | added TTFT p99 µs | added end p99 µs | streams | errors |")
print("|---|---|---|---|---|---|---|---|---|")
off = [load("lat", r, "off") for r in R]
for t in ["off", "record", "block"]:
    d = [load("lat", r, t) for r in R]
    add = lambda p: med((x[p] - y[p]) * 1000 for x, y in zip(d, off))
    print(f"| {t} | {med(x['p50_ms'] for x in d):.3f} | {med(x['p99_ms'] for x in d):.3f} | "
          f"{med(x['end_p50_ms'] for x in d):.3f} | {med(x['end_p99_ms'] for x in d):.3f} | "
          f"{add('p99_ms'):+.0f} | {add('end_p99_ms'):+.0f} | {sum(x['n'] for x in d)} | {sum(x['errors'] for x in d)} |")
print()
print("| max streams (50 chunks, 64 concurrent) | streams/s | sidecar CPU µs per stream |")
print("|---|---|---|")
cpu = {}
for t in ["off", "record", "block"]:
    d = [load("max", r, t) for r in R]
    c = [load("cpu", r, t)["ticks"] / hz * 1e6 / max(1, x["n"]) for r, x in zip(R, d)]
    cpu[t] = c
    print(f"| {t} | {med(x['streams_per_s'] for x in d):.0f} | {med(c):.1f} |")
print()
for t in ["record", "block"]:
    ratios = [a / b for a, b in zip(cpu[t], cpu["off"])]
    print(f"- CPU per stream {t}/off per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {med(ratios):.2f}")
PY
