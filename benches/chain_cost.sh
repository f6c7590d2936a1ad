#!/usr/bin/env bash
# What a fallback chain costs on the hot path when nothing fails: sloguard with one upstream
# ("plain") against sloguard with a circuit breaker on each of three upstreams, fallback_on and
# max_replay_body ("chain"), both in front of the same simulated upstream, side by side.
#
#   bash benches/chain_cost.sh      # ROUNDS=5 rounds of N=50000 requests; results in bench-results/chain/
#
# Per round and target: a fixed number of requests, closed loop (oha, CONNS connections, core
# 0), GET with no body and POST with a 1 KiB body (read ahead and kept for replay on the chain);
# the proxy's CPU time over the run (utime + stime from /proc, the figure noise moves least)
# divided by the requests, and oha's latency percentiles. Proxies and upstream share core 1,
# one tokio worker each. The summary gives medians over rounds and the chain/plain ratios.
#
# Then the same two configs under callgrind (valgrind, installed if missing), beside the floor (a
# bare hyper proxy of ~50 lines, examples/floor_proxy.rs: what hyper and tokio alone cost):
# instructions per request over CG_N requests of each kind after a warm-up, counters zeroed and
# dumped around the load with callgrind_control. Instruction counts do not move with a noisy
# neighbour.
# BASELINE=/path/to/sloguard (a build of an earlier commit, e.g. the foundation's, built alone:
# `cargo build --release --bin sloguard`) adds that
# binary, with the plain config, to the instruction table: what the plain path itself gained.
# Calls between agents: "solo" (an agent listener beside the egress one, so that egress calls
# are looked up in the correlation table) and "cascade" (solo with `cascade: {}`) add a table of
# their own, egress GET and POST and an inbound GET, every request carrying a task id and a
# traceparent: what correlation and cascade cost.
# MCP tool calls: a `tools/call` through an `mcp` listener against a chat completion through an
# `llm` listener, each answered as JSON and as SSE by simulated servers that answer at once (the
# LLM stream: two content chunks; the MCP stream: a progress event, then the result), in
# instructions per call. `ONLY=calls bash benches/chain_cost.sh` runs this part alone.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-50000}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-32}
OUT=${OUT:-bench-results/chain}
UP_PORT=18180 PLAIN_PORT=18181 CHAIN_PORT=18182
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)

cat >"$OUT/plain.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:18190}
listeners:
  - {name: egress, bind: 127.0.0.1:$PLAIN_PORT, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
cat >"$OUT/chain.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:18191}
listeners:
  - {name: egress, bind: 127.0.0.1:$CHAIN_PORT, role: llm, route: llm}
routes:
  llm:
    upstreams: [sim, spare1, spare2]
    fallback_on: [connect_error, timeout, 5xx, 429]
    max_replay_body: 1MiB
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai, circuit_breaker: {}}
  spare1: {url: http://127.0.0.1:$UP_PORT, protocol: openai, circuit_breaker: {}}
  spare2: {url: http://127.0.0.1:$UP_PORT, protocol: openai, circuit_breaker: {}}
YAML
declare -A PID PORT=([plain]=$PLAIN_PORT [chain]=$CHAIN_PORT)
for t in plain chain; do
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/$t.yaml" 2>"$OUT/$t.log" &
  PID[$t]=$!
  PIDS+=($!)
done
wait_port $UP_PORT; wait_port $PLAIN_PORT; wait_port $CHAIN_PORT
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$OUT/body.txt"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
run() { # name target method
  local name=$1 t=$2 method=$3 extra=()
  [ "$method" = POST ] && extra=(-m POST -D "$OUT/body.txt" -T application/json)
  local before after
  before=$(ticks "${PID[$t]}")
  taskset -c 0 oha --no-tui --output-format json -c "$CONNS" -n "$N" "${extra[@]}" "http://127.0.0.1:${PORT[$t]}/bytes/1024" >"$OUT/$name.json"
  after=$(ticks "${PID[$t]}")
  echo "$(( after - before ))" >"$OUT/$name.ticks"
}

# --- MCP tool calls against LLM calls (callgrind) -----------------------------------------------
calls_section() {
  local MCP_UP=18280 LLM_UP=18281 CALLS_PORT=18188 TOOLS_PORT=18189 n=${CG_N:-2000}
  command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
  cargo build --release --example sim_mcp
  SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 SIM_CHUNKS=2 TOKIO_WORKER_THREADS=1 target/release/examples/sim_upstream 127.0.0.1:$LLM_UP >/dev/null &
  PIDS+=($!)
  TOKIO_WORKER_THREADS=1 target/release/examples/sim_mcp 127.0.0.1:$MCP_UP >/dev/null &
  PIDS+=($!)
  cat >"$OUT/calls.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:18195}
listeners:
  - {name: egress, bind: 127.0.0.1:$CALLS_PORT, role: llm, route: llm}
  - {name: tools, bind: 127.0.0.1:$TOOLS_PORT, role: mcp, route: tools}
routes:
  llm: {upstreams: [sim]}
  tools: {upstreams: [sim-tools]}
upstreams:
  sim: {url: http://127.0.0.1:$LLM_UP, protocol: openai}
  sim-tools: {url: http://127.0.0.1:$MCP_UP, protocol: mcp}
YAML
  local chat='{"model":"sim-gpt","messages":[{"role":"user","content":"Summarize the ticket."}]'
  echo "$chat,\"stream\":false}" >"$OUT/llm-json.json"
  echo "$chat,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" >"$OUT/llm-sse.json"
  echo '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"summarize","arguments":{"text":"Summarize the ticket."}}}' >"$OUT/mcp.json"
  rm -f "$OUT"/cg-calls.out*
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-calls.out" \
    target/release/sloguard run --config "$OUT/calls.yaml" 2>"$OUT/cg-calls.log" &
  local pid=$!
  PIDS+=($pid)
  wait_port $LLM_UP; wait_port $MCP_UP
  for port in $CALLS_PORT $TOOLS_PORT; do for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done; done
  phase() { # name url body accept
    local args=(--no-tui -c 4 -m POST -D "$3" -T application/json -H "accept: $4")
    oha "${args[@]}" -n 300 "$2" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    oha "${args[@]}" -n "$n" "$2" >"$OUT/calls-$1.txt"
    callgrind_control -d "$1" "$pid" >/dev/null
  }
  local llm="http://127.0.0.1:$CALLS_PORT/v1/chat/completions" mcp="http://127.0.0.1:$TOOLS_PORT/mcp"
  phase LLM_JSON "$llm" "$OUT/llm-json.json" "application/json"
  phase LLM_SSE "$llm" "$OUT/llm-sse.json" "text/event-stream"
  phase MCP_JSON "$mcp" "$OUT/mcp.json" "application/json"
  phase MCP_SSE "$mcp" "$OUT/mcp.json" "text/event-stream"
  python3 - "$OUT" "$n" <<'PY' | tee -a "$OUT/summary.md"
import glob, sys
out, n = sys.argv[1], int(sys.argv[2])
def per_call(kind):
    for f in sorted(glob.glob(f"{out}/cg-calls.out.*")):
        text = open(f).read()
        if f"Trigger: dump {kind}\n" in text:
            return int(next(l for l in text.splitlines() if l.startswith("summary:")).split()[1]) / n
    raise SystemExit(f"no callgrind dump {kind}")
def ok(kind):
    text = open(f"{out}/calls-{kind}.txt").read()
    return "[200]" in text and not any(f"[{c}]" in text for c in ("400", "404", "500", "502", "503"))
print(f"\nMCP tool calls against LLM calls (callgrind, {n} calls each after a warm-up; one sidecar, one tokio worker):\n")
print("| answered as | LLM chat completion (`llm`) | MCP `tools/call` (`mcp`) | MCP / LLM |")
print("|---|---|---|---|")
for fmt in ["JSON", "SSE"]:
    l, m = per_call(f"LLM_{fmt}"), per_call(f"MCP_{fmt}")
    print(f"| {fmt} | {l:.0f} | {m:.0f} | {m / l:.3f} |")
bad = [k for k in ("LLM_JSON", "LLM_SSE", "MCP_JSON", "MCP_SSE") if not ok(k)]
if bad:
    raise SystemExit(f"calls that were not all 200: {bad} (see {out}/calls-*.txt)")
PY
}
if [ "${ONLY:-}" = calls ]; then
  cleanup
  PIDS=()
  calls_section
  exit 0
fi

echo "warm-up"
for t in plain chain; do run warmup-$t $t GET; done
for round in $(seq "$ROUNDS"); do
  for method in GET POST; do
    for t in plain chain; do
      echo "round $round, $method: $t"; run "$method-r$round-$t" $t $method
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$N" "$HZ" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, rounds, n, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
med = statistics.median
print(f"Medians over {rounds} rounds of {n} requests; plain and chain back to back in each round.\n")
print("| method | target | CPU µs/request | p50 ms | p99 ms | req/s | failed |")
print("|---|---|---|---|---|---|---|")
cpu = {}
for method in ["GET", "POST"]:
    for t in ["plain", "chain"]:
        runs = [json.load(open(f"{out}/{method}-r{r}-{t}.json")) for r in range(1, rounds + 1)]
        us = [int(open(f"{out}/{method}-r{r}-{t}.ticks").read()) / hz * 1e6 / n for r in range(1, rounds + 1)]
        cpu[(method, t)] = us
        failed = sum(sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2")) for d in runs)
        print(f"| {method} | {t} | {med(us):.1f} | {med(d['latencyPercentiles']['p50'] * 1000 for d in runs):.3f} | "
              f"{med(d['latencyPercentiles']['p99'] * 1000 for d in runs):.3f} | {med(d['summary']['requestsPerSec'] for d in runs):.0f} | {failed} |")
print()
for method in ["GET", "POST"]:
    ratios = [c / p for c, p in zip(cpu[(method, "chain")], cpu[(method, "plain")])]
    print(f"- {method}: chain/plain CPU per request, per round: {', '.join(f'{r:.3f}' for r in ratios)}; median {med(ratios):.3f}")
PY

# --- instructions per request (callgrind) ------------------------------------------------------
CG_N=${CG_N:-2000}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cleanup
PIDS=()
TOKIO_WORKER_THREADS=1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)
# Calls between agents: "solo" is plain with an agent listener beside the egress one (so egress
# calls are correlated with inbound requests), "cascade" is solo with `cascade: {}`. Every
# request carries a task id and a traceparent, as an agent's calls do.
for t in solo cascade; do
  cat >"$OUT/$t.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$([ $t = solo ] && echo 18193 || echo 18194)}
listeners:
  - {name: egress, bind: 127.0.0.1:$([ $t = solo ] && echo 18184 || echo 18185), role: llm, route: llm}
  - {name: inbound, bind: 127.0.0.1:$([ $t = solo ] && echo 18186 || echo 18187), role: agent, route: agent}
routes:
  llm: {upstreams: [sim]}
  agent: {upstreams: [app]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
  app: {url: http://127.0.0.1:$UP_PORT}
YAML
done
echo "cascade: {}" >>"$OUT/cascade.yaml"
PORT[solo]=18184 PORT[cascade]=18185
declare -A INBOUND=([solo]=18186 [cascade]=18187)
CALL_HEADERS=(-H "x-agent-task-id: bench-task-1" -H "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
# The floor: a bare hyper proxy (examples/floor_proxy.rs), nothing of sloguard's.
cargo build --release --example floor_proxy
CG_TARGETS=(floor plain chain solo cascade)
PORT[floor]=18196
declare -A BIN=([plain]=target/release/sloguard [chain]=target/release/sloguard [solo]=target/release/sloguard [cascade]=target/release/sloguard)
rm -f "$OUT"/cg-*.out*
if [ -n "${BASELINE:-}" ]; then
  CG_TARGETS=(floor baseline plain chain solo cascade)
  BIN[baseline]=$BASELINE
  PORT[baseline]=18183
  sed "s/18190/18192/; s/$PLAIN_PORT/18183/" "$OUT/plain.yaml" >"$OUT/baseline.yaml"
fi
for t in "${CG_TARGETS[@]}"; do
  if [ "$t" = floor ]; then
    cmd=(target/release/examples/floor_proxy "127.0.0.1:${PORT[floor]}" "http://127.0.0.1:$UP_PORT")
  else
    cmd=("${BIN[$t]}" run --config "$OUT/$t.yaml")
  fi
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$t.out" \
    "${cmd[@]}" 2>"$OUT/cg-$t.log" &
  PID[$t]=$!
  PIDS+=($!)
done
wait_port $UP_PORT
for t in "${CG_TARGETS[@]}"; do for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"${PORT[$t]}") 2>/dev/null && break; sleep 0.2; done; done
for t in "${CG_TARGETS[@]}"; do
  url="http://127.0.0.1:${PORT[$t]}/bytes/1024"
  oha --no-tui -c 4 -n 300 "${CALL_HEADERS[@]}" "$url" >/dev/null
  callgrind_control -z "${PID[$t]}" >/dev/null
  oha --no-tui -c 4 -n "$CG_N" "${CALL_HEADERS[@]}" "$url" >/dev/null
  callgrind_control -d GET "${PID[$t]}" >/dev/null
  callgrind_control -z "${PID[$t]}" >/dev/null
  oha --no-tui -c 4 -n "$CG_N" "${CALL_HEADERS[@]}" -m POST -D "$OUT/body.txt" -T application/json "$url" >/dev/null
  callgrind_control -d POST "${PID[$t]}" >/dev/null
  if [ -n "${INBOUND[$t]:-}" ]; then
    # The inbound request: checked, entered in the correlation table, taken out at its end.
    inbound="http://127.0.0.1:${INBOUND[$t]}/bytes/1024"
    oha --no-tui -c 4 -n 300 "${CALL_HEADERS[@]}" "$inbound" >/dev/null
    callgrind_control -z "${PID[$t]}" >/dev/null
    oha --no-tui -c 4 -n "$CG_N" "${CALL_HEADERS[@]}" "$inbound" >/dev/null
    callgrind_control -d INBOUND "${PID[$t]}" >/dev/null
  fi
done
python3 - "$OUT" "$CG_N" "${BASELINE:-}" <<'PY' | tee -a "$OUT/summary.md"
import glob, sys
out, n, baseline = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def total(t, kind):
    for f in sorted(glob.glob(f"{out}/cg-{t}.out.*")):
        text = open(f).read()
        if f"Trigger: Program termination" in text or f"Trigger: dump {kind}" not in text:
            continue
        return int(next(l for l in text.splitlines() if l.startswith("summary:")).split()[1])
print(f"\nInstructions per request (callgrind, {n} requests after a warm-up); floor: a bare hyper proxy:\n")
print("| method | floor | plain | plain − floor | plain / floor | chain | chain − plain | chain / plain |")
print("|---|---|---|---|---|---|---|---|")
for kind in ["GET", "POST"]:
    f, p, c = total("floor", kind) / n, total("plain", kind) / n, total("chain", kind) / n
    print(f"| {kind} | {f:.0f} | {p:.0f} | {p - f:+.0f} | {p / f:.3f} | {c:.0f} | {c - p:+.0f} | {c / p:.3f} |")
print("\nCalls between agents: solo (an agent listener beside egress: calls correlated) and cascade\n(solo with `cascade: {}`), every request with a task id and a traceparent:\n")
print("| request | plain | solo | cascade | cascade / solo | cascade / plain |")
print("|---|---|---|---|---|---|")
for kind in ["GET", "POST"]:
    p, so, ca = (total(t, kind) / n for t in ("plain", "solo", "cascade"))
    print(f"| egress {kind} | {p:.0f} | {so:.0f} | {ca:.0f} | {ca / so:.3f} | {ca / p:.3f} |")
so, ca = (total(t, "INBOUND") / n for t in ("solo", "cascade"))
print(f"| inbound GET | – | {so:.0f} | {ca:.0f} | {ca / so:.3f} | – |")
if baseline:
    print(f"\nBaseline {baseline}, plain config:\n")
    print("| method | baseline | plain | plain / baseline | chain / baseline |")
    print("|---|---|---|---|---|")
    for kind in ["GET", "POST"]:
        b, p, c = (total(t, kind) / n for t in ("baseline", "plain", "chain"))
        print(f"| {kind} | {b:.0f} | {p:.0f} | {p / b:.3f} | {c / b:.3f} |")
PY

# MCP tool calls against LLM calls.
cleanup
PIDS=()
calls_section
