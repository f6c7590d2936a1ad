#!/usr/bin/env bash
# What OTLP export costs a request: the simulated provider direct, through a sidecar without
# `otlp` (off), one exporting metrics every second and a span for every request (sample_ratio 1.0)
# to a real OTLP/gRPC receiver (on), and one exporting the same to a collector that is down (down:
# nothing listens, every export fails and is dropped), side by side in one invocation on loopback.
#
#   bash benches/otlp_load.sh       # ROUNDS=5 rounds of DURATION=10s runs; results in bench-results/
#
# Layout (2-core machine): the provider and the three sidecars share core 1 (one tokio worker
# each, and each sidecar's export thread); the load generator (oha) and the OTLP receiver (a
# collector elsewhere in the cluster) on core 0. Open loop at RATE=1000 req/s to each of the four
# targets at once (a load generator each), with latency correction, CONNS=32 connections each, two
# request kinds: GET of 1 KiB (`bytes`), and a non-streamed OpenAI chat completion (`chat`, an LLM
# call: its span carries the GenAI attributes). Loading the four together means a noisy neighbour
# hits them alike (run one after another, p99 moved more between runs than between targets). The
# summary takes the median over rounds of each target's p99 minus the direct p99 of the same
# round (added p99). Target: on <= 1.10 x off.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-1000}
CONNS=${CONNS:-32}
OUT=${OUT:-bench-results}
UP_PORT=18280 OFF_PORT=18281 ON_PORT=18282 DOWN_PORT=18283 SINK_PORT=18290 DEAD_PORT=18299
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream --example otlp_sink

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 SIM_CHUNKS=5 TOKIO_WORKER_THREADS=1 taskset -c 1 \
  target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)
# The receiver stands for a collector elsewhere in the cluster: on the load generator's core, not
# on the sidecar's.
TOKIO_WORKER_THREADS=1 taskset -c 0 target/release/examples/otlp_sink 127.0.0.1:$SINK_PORT >"$OUT/otlp-sink.log" &
PIDS+=($!)

sidecar() { # name port admin-port otlp-section
  cat >"$OUT/otlp-$1.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$3}
listeners:
  - {name: egress, bind: 127.0.0.1:$2, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
$4
YAML
  RUST_LOG=error TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/otlp-$1.yaml" 2>"$OUT/otlp-$1.log" &
  PIDS+=($!)
}
sidecar off $OFF_PORT 18291 ""
sidecar on $ON_PORT 18292 "otlp: {endpoint: 'http://127.0.0.1:$SINK_PORT', interval: 1s, timeout: 1s, traces: {sample_ratio: 1.0}}"
sidecar down $DOWN_PORT 18293 "otlp: {endpoint: 'http://127.0.0.1:$DEAD_PORT', interval: 1s, timeout: 1s, traces: {sample_ratio: 1.0}}"
for p in $UP_PORT $SINK_PORT $OFF_PORT $ON_PORT $DOWN_PORT; do wait_port "$p"; done
sleep 0.5

declare -A URL=([direct]=$UP_PORT [off]=$OFF_PORT [on]=$ON_PORT [down]=$DOWN_PORT)
TARGETS=(direct off on down)
BODY='{"model":"gpt-sim","messages":[{"role":"user","content":"hello"}]}'
load() { # out-name target kind extra-args...
  local name=$1 target=$2 kind=$3; shift 3
  local base="http://127.0.0.1:${URL[$target]}"
  if [ "$kind" = chat ]; then
    taskset -c 0 oha --no-tui --output-format json -c "$CONNS" -m POST -H 'content-type: application/json' \
      -d "$BODY" "$@" "$base/v1/chat/completions" >"$OUT/$name.json"
  else
    taskset -c 0 oha --no-tui --output-format json -c "$CONNS" "$@" "$base/bytes/1024" >"$OUT/$name.json"
  fi
}

echo "warm-up"
for t in "${TARGETS[@]}"; do load "otlp-warmup-$t" "$t" chat -z 2s; done
# The four targets are loaded at the same time, each at RATE, so that whatever else the machine
# does meanwhile hits them alike; rounds and kinds take turns.
for round in $(seq "$ROUNDS"); do
  for kind in bytes chat; do
    echo "round $round, $kind: ${TARGETS[*]} at once, $RATE req/s each"
    LOADS=()
    for t in "${TARGETS[@]}"; do
      load "otlp-$kind-r$round-$t" "$t" "$kind" -z "$DURATION" -q "$RATE" --latency-correction &
      LOADS+=($!)
    done
    wait "${LOADS[@]}"
  done
done
sleep 2
for t in on down; do
  curl -s "http://127.0.0.1:$([ $t = on ] && echo 18292 || echo 18293)/metrics" >"$OUT/otlp-$t-metrics.txt"
done
tail -1 "$OUT/otlp-sink.log" >"$OUT/otlp-sink-last.txt"

python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/otlp-summary.md"
import json, re, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
targets = ["direct", "off", "on", "down"]
med = statistics.median
def run(kind, r, t): return json.load(open(f"{out}/otlp-{kind}-r{r}-{t}.json"))
def ms(d, p): return d["latencyPercentiles"][p] * 1000
def failed(d):
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    return sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2")) + sum(errors.values())
def total(d): return sum(d.get("statusCodeDistribution", {}).values())
print(f"Medians over {rounds} rounds; each round loads direct, off, on and down at the same time, per kind.\n")
print("| kind | target | p50 ms | p99 ms | added p50 | added p99 | requests | failed |")
print("|---|---|---|---|---|---|---|---|")
added = {}
for kind in ["bytes", "chat"]:
    for t in targets:
        runs = [run(kind, r, t) for r in range(1, rounds + 1)]
        direct = [run(kind, r, "direct") for r in range(1, rounds + 1)]
        a50 = med(ms(d, "p50") - ms(b, "p50") for d, b in zip(runs, direct))
        a99 = med(ms(d, "p99") - ms(b, "p99") for d, b in zip(runs, direct))
        added[(kind, t)] = a99
        print(f"| {kind} | {t} | {med(ms(d, 'p50') for d in runs):.3f} | {med(ms(d, 'p99') for d in runs):.3f} | "
              f"{a50:+.3f} | {a99:+.3f} | {sum(total(d) for d in runs)} | {sum(failed(d) for d in runs)} |")
print()
for kind in ["bytes", "chat"]:
    off = added[(kind, "off")]
    for t in ["on", "down"]:
        x = added[(kind, t)]
        if off > 0:
            r = x / off
            verdict = f"ratio {r:.2f} (target <= 1.10: {'met' if r <= 1.10 else 'NOT met'})"
        else:
            verdict = "off added no p99 over direct in this run: no ratio (noise)"
        print(f"- {kind}: median added p99 with OTLP {t} {x:+.3f} ms vs off {off:+.3f} ms: {verdict}")
def metric(text, name, labels):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name) and all(f'{k}="{v}"' in l for k, v in labels))
for t in ["on", "down"]:
    m = open(f"{out}/otlp-{t}-metrics.txt").read()
    print(f"- {t}: sloguard_otlp_dropped_total traces {metric(m, 'sloguard_otlp_dropped_total', [('signal', 'traces')]):.0f}, "
          f"metrics {metric(m, 'sloguard_otlp_dropped_total', [('signal', 'metrics')]):.0f}")
print(f"- receiver (on): {open(f'{out}/otlp-sink-last.txt').read().strip()}")
PY
