#!/usr/bin/env bash
# What the correctness checks cost per LLM call, in instructions (callgrind): sloguard in front
# of the simulated provider on the `llm` role without a `correctness:` section ("off") and with
# `correctness: {}` ("checks": structured_output, truncated, refusal), each sent Chat Completions
# calls (JSON, and streamed) that ask for no schema; and "checks" sent the same calls asking for
# a JSON schema (the output kept and validated against the compiled schema).
#
#   bash benches/correctness_cost.sh     # CG_N=2000 calls of each kind; results in bench-results/correctness/
set -euo pipefail
cd "$(dirname "$0")/.."

CG_N=${CG_N:-2000}
OUT=${OUT:-bench-results/correctness}
UP_PORT=18280
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
# The sidecar alone, as it ships (see chain_cost.sh), then the simulated provider.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 SIM_CHUNKS=20 TOKIO_WORKER_THREADS=1 \
  target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)

declare -A PORT=([off]=18281 [checks]=18282) ADMIN=([off]=18291 [checks]=18292)
for t in off checks; do
  cat >"$OUT/$t.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:${ADMIN[$t]}}
listeners:
  - {name: egress, bind: 127.0.0.1:${PORT[$t]}, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
done
echo "correctness: {}" >>"$OUT/checks.yaml"

SCHEMA='{"type":"object","properties":{"summary":{"type":"string"},"priority":{"enum":["low","high"]}},"required":["summary","priority"]}'
printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Triage ticket T-1042"}]}' >"$OUT/plain.json"
printf '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Triage ticket T-1042"}]}' >"$OUT/plain-stream.json"
printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Triage ticket T-1042"}],"response_format":{"type":"json_schema","json_schema":{"name":"triage","strict":true,"schema":%s}}}' "$SCHEMA" >"$OUT/schema.json"
printf '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Triage ticket T-1042"}],"response_format":{"type":"json_schema","json_schema":{"name":"triage","strict":true,"schema":%s}}}' "$SCHEMA" >"$OUT/schema-stream.json"

rm -f "$OUT"/cg-*.out*
declare -A PID
for t in off checks; do
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$t.out" \
    target/release/sloguard run --config "$OUT/$t.yaml" 2>"$OUT/cg-$t.log" &
  PID[$t]=$!
  PIDS+=($!)
done
wait_port $UP_PORT
for t in off checks; do wait_port "${PORT[$t]}"; done

# One kind of call: a warm-up, then CG_N calls between a zero and a dump named KIND.
measure() {
  local t=$1 kind=$2 body=$3
  local url="http://127.0.0.1:${PORT[$t]}/v1/chat/completions"
  oha --no-tui -c 4 -n 300 -m POST -D "$OUT/$body" -T application/json "$url" >/dev/null
  callgrind_control -z "${PID[$t]}" >/dev/null
  oha --no-tui -c 4 -n "$CG_N" -m POST -D "$OUT/$body" -T application/json "$url" >"$OUT/oha-$t-$kind.txt"
  callgrind_control -d "$kind" "${PID[$t]}" >/dev/null
}
for t in off checks; do
  measure "$t" json plain.json
  measure "$t" stream plain-stream.json
done
measure checks schema-json schema.json
measure checks schema-stream schema-stream.json

python3 - "$OUT" "$CG_N" <<'PY' | tee "$OUT/summary.md"
import glob, sys
out, n = sys.argv[1], int(sys.argv[2])
def total(t, kind):
    for f in sorted(glob.glob(f"{out}/cg-{t}.out.*")):
        text = open(f).read()
        if f"Trigger: dump {kind}\n" not in text:
            continue
        return int(next(l for l in text.splitlines() if l.startswith("summary:")).split()[1]) / n
print(f"Instructions per Chat Completions call (callgrind, {n} calls after a warm-up):\n")
print("| call | off | checks | checks / off | checks, schema asked | schema / off |")
print("|---|---|---|---|---|---|")
for kind in ["json", "stream"]:
    o, c, s = total("off", kind), total("checks", kind), total("checks", f"schema-{kind}")
    print(f"| {kind} | {o:.0f} | {c:.0f} | {c / o:.3f} | {s:.0f} | {s / o:.3f} |")
PY
