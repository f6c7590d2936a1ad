#!/usr/bin/env bash
# End-to-end load bench: the simulated upstream direct, through sloguard, through sloguard with a
# circuit breaker and a 3-upstream fallback chain configured (`sloguard-chain`), through nginx, and
# through the floor (`floor`: examples/floor_proxy.rs, a bare hyper proxy of ~50 lines, what hyper
# and tokio alone cost), side by side in one invocation on loopback.
#
#   bash benches/load.sh            # ROUNDS=3 rounds of DURATION=5s runs; results in bench-results/
#
# Layout (2-core machine): the upstream and the proxy under test share core 1, each with one
# worker (sloguard and the floor: one tokio worker; nginx: one worker process); the load
# generator (oha) runs on core 0. Scenarios, each against every target:
# - open loop at 2,000 and 5,000 req/s with latency correction, GETs of 1 KiB (p50/p99/p99.9);
# - closed-loop max throughput (CONNS connections), GETs of 1 KiB;
# - closed-loop max throughput of LLM calls: POST /v1/chat/completions, a small non-streamed
#   OpenAI request, answered at once (the simulated upstream runs with SIM_FIRST_CHUNK_MS=0 and
#   SIM_CHUNK_MS=0) and read by sloguard on its `llm` listener (the script checks on its admin
#   port that the GenAI metrics counted the calls, and that safety read their answers);
# - a streaming run (SSE, 50 chunks) for time to first byte.
# Each scenario runs ROUNDS times, the targets back to back within a round, so a noisy
# neighbour hits them all alike; the summary takes the median over rounds. Added latency =
# proxy percentile minus direct percentile. The summary ends with the comparison issue 26 asks
# for: max req/s of sloguard / nginx and floor / nginx (GET and LLM call), and the added p99 and
# p99.9 of sloguard (and the floor) against nginx's at 2,000 and 5,000 req/s.
# FLOOR_RUNTIME, when set, is passed on to the floor (whose runtime it selects, if it reads it).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench-results}
CONNS=${CONNS:-64}
UP_PORT=18080 SG_PORT=18081 NGX_PORT=18082 CHAIN_PORT=18083 FLOOR_PORT=18084 ADMIN_PORT=18090 CHAIN_ADMIN_PORT=18091
# The LLM call of the max-throughput run: a small non-streamed Chat Completions request.
CHAT_BODY='{"model":"m","messages":[{"role":"user","content":"hi"}]}'
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- tools -----------------------------------------------------------------------------------
if ! command -v nginx >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream --example ttfb --example floor_proxy

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- the servers -----------------------------------------------------------------------------
# Chat completions answered at once (no thinking, no gap between chunks): the LLM run measures the
# proxies, not a model. /bytes and /sse do not read these.
SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)

# What every sloguard here runs with: safety reading each answer and an SLO on each SLI of the
# `llm` role (benches/guards.yaml).
GUARDS=$(cat benches/guards.yaml)
cat >"$OUT/sloguard.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$ADMIN_PORT}
listeners:
  - {name: egress, bind: 127.0.0.1:$SG_PORT, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
$GUARDS
YAML
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/sloguard.yaml" 2>"$OUT/sloguard.log" &
SG_PID=$!
PIDS+=($SG_PID)

# The same, with what issue 4 adds on the hot path: a breaker on the primary, two fallbacks (never
# used: the primary is healthy), replay within max_replay_body, and the cache.
cat >"$OUT/sloguard-chain.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$CHAIN_ADMIN_PORT}
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
$GUARDS
YAML
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/sloguard-chain.yaml" 2>"$OUT/sloguard-chain.log" &
PIDS+=($!)

cat >"$OUT/nginx.conf" <<NGX
worker_processes 1;
worker_cpu_affinity 10;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream sim { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
taskset -c 1 "$NGINX" -c "$OUT/nginx.conf" -p "$OUT" &
PIDS+=($!)

# The floor: a bare hyper proxy, nothing of sloguard's.
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/examples/floor_proxy 127.0.0.1:$FLOOR_PORT http://127.0.0.1:$UP_PORT 2>"$OUT/floor.log" &
PIDS+=($!)

wait_port $UP_PORT; wait_port $SG_PORT; wait_port $NGX_PORT; wait_port $CHAIN_PORT; wait_port $FLOOR_PORT
sleep 0.5
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SG_PID/status"; }
IDLE_RSS=$(rss_kib)

declare -A URL=([direct]=http://127.0.0.1:$UP_PORT [sloguard]=http://127.0.0.1:$SG_PORT [sloguard-chain]=http://127.0.0.1:$CHAIN_PORT [nginx]=http://127.0.0.1:$NGX_PORT [floor]=http://127.0.0.1:$FLOOR_PORT)
TARGETS=(direct sloguard sloguard-chain nginx floor)

load() { # name target extra-args...
  local name=$1 target=$2; shift 2
  taskset -c 0 oha --no-tui --output-format json -c "$CONNS" "$@" "${URL[$target]}/bytes/1024" >"$OUT/$name-$target.json"
}
llm() { # name target extra-args...: closed-loop non-streamed chat completions
  local name=$1 target=$2; shift 2
  taskset -c 0 oha --no-tui --output-format json -c "$CONNS" -m POST -T application/json -d "$CHAT_BODY" "$@" \
    "${URL[$target]}/v1/chat/completions" >"$OUT/$name-$target.json"
}
# LLM calls whose answer a sidecar read: its output-token observations (the usage it parsed).
genai_calls() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^gen_ai_client_token_usage_count/ && /gen_ai_token_type="output"/ {s += $NF} END {printf "%d\n", s}'
}
# Answers a sidecar's safety detectors read (every 2xx LLM answer, with safety on).
safety_scans() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^agent_responses_total/ {s += $NF} END {printf "%d\n", s}'
}

echo "warm-up"
for t in "${TARGETS[@]}"; do load warmup "$t" -z 2s; llm llm-warmup "$t" -z 1s; done
GENAI_BEFORE=$(genai_calls $ADMIN_PORT) CHAIN_GENAI_BEFORE=$(genai_calls $CHAIN_ADMIN_PORT)
SCANS_BEFORE=$(safety_scans $ADMIN_PORT) CHAIN_SCANS_BEFORE=$(safety_scans $CHAIN_ADMIN_PORT)
for round in $(seq "$ROUNDS"); do
  for rate in 2000 5000; do
    for t in "${TARGETS[@]}"; do
      echo "round $round, $rate req/s: $t"; load "rate$rate-r$round" "$t" -z "$DURATION" -q "$rate" --latency-correction
    done
  done
  for t in "${TARGETS[@]}"; do echo "round $round, max: $t"; load "max-r$round" "$t" -z "$DURATION"; done
  for t in "${TARGETS[@]}"; do echo "round $round, llm max: $t"; llm "llm-r$round" "$t" -z "$DURATION"; done
  for t in "${TARGETS[@]}"; do
    echo "round $round, sse: $t"
    taskset -c 0 target/release/examples/ttfb "${URL[$t]}/sse/50?gap_ms=1" 1000 20 >"$OUT/sse-r$round-$t.json"
  done
done
LOADED_RSS=$(rss_kib)
# Did sloguard read the LLM runs' calls? Its GenAI metrics against the 2xx oha got.
GENAI=$(($(genai_calls $ADMIN_PORT) - GENAI_BEFORE)) CHAIN_GENAI=$(($(genai_calls $CHAIN_ADMIN_PORT) - CHAIN_GENAI_BEFORE))
# And did its safety detectors read the answers?
SCANS=$(($(safety_scans $ADMIN_PORT) - SCANS_BEFORE)) CHAIN_SCANS=$(($(safety_scans $CHAIN_ADMIN_PORT) - CHAIN_SCANS_BEFORE))

python3 - "$OUT" "$IDLE_RSS" "$LOADED_RSS" "$ROUNDS" "$GENAI" "$CHAIN_GENAI" "$SCANS" "$CHAIN_SCANS" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, idle_rss, loaded_rss, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
genai = {"sloguard": int(sys.argv[5]), "sloguard-chain": int(sys.argv[6])}
scans = {"sloguard": int(sys.argv[7]), "sloguard-chain": int(sys.argv[8])}
targets = ["direct", "sloguard", "sloguard-chain", "nginx", "floor"]
def oha(name, r, t): return json.load(open(f"{out}/{name}-r{r}-{t}.json"))
def ms(d, p): return d["latencyPercentiles"][p] * 1000
def failed(d):
    # Requests still in flight when a timed run ends are aborted by oha: not failures.
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    return sum(v for k, v in d.get("statusCodeDistribution", {}).items() if not k.startswith("2")) + sum(errors.values())
med = statistics.median
print(f"Medians over {rounds} rounds; each round runs direct, sloguard, sloguard-chain, nginx and floor back to back.")
print("max: closed loop, GET 1 KiB; llm: closed loop, POST /v1/chat/completions (non-streamed, answered at once).\n")
print("| run | target | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | req/s | failed |")
print("|---|---|---|---|---|---|---|---|---|---|")
summary = {}
for name in ["rate2000", "rate5000", "max", "llm"]:
    for t in targets:
        runs = [oha(name, r, t) for r in range(1, rounds + 1)]
        direct = [oha(name, r, "direct") for r in range(1, rounds + 1)]
        pct = {p: med(ms(d, p) for d in runs) for p in ("p50", "p99", "p99.9")}
        added = {p: med(ms(d, p) - ms(b, p) for d, b in zip(runs, direct)) for p in ("p50", "p99", "p99.9")}
        rps = med(d["summary"]["requestsPerSec"] for d in runs)
        summary[(name, t)] = (added, rps, [d["summary"]["requestsPerSec"] for d in runs])
        print(f"| {name} | {t} | {pct['p50']:.3f} | {pct['p99']:.3f} | {pct['p99.9']:.3f} | {added['p50']:+.3f} | "
              f"{added['p99']:+.3f} | {added['p99.9']:+.3f} | {rps:.0f} | {sum(failed(d) for d in runs)} |")
print()
print("| streaming (SSE, 50 chunks) | p50 TTFB ms | p99 TTFB ms | added p50 | added p99 |")
print("|---|---|---|---|---|")
sse = {t: [json.load(open(f"{out}/sse-r{r}-{t}.json")) for r in range(1, rounds + 1)] for t in targets}
for t in targets:
    a50 = med(d["p50_ms"] - b["p50_ms"] for d, b in zip(sse[t], sse["direct"]))
    a99 = med(d["p99_ms"] - b["p99_ms"] for d, b in zip(sse[t], sse["direct"]))
    print(f"| {t} | {med(d['p50_ms'] for d in sse[t]):.3f} | {med(d['p99_ms'] for d in sse[t]):.3f} | {a50:+.3f} | {a99:+.3f} |")
print()
for name in ["rate2000", "rate5000"]:
    sg, ng = summary[(name, "sloguard")][0]["p99"], summary[(name, "nginx")][0]["p99"]
    if ng > 0:
        r = sg / ng
        verdict = f"ratio {r:.2f} (target <= 1.0: {'met' if r <= 1.0 else 'NOT met'})"
    else:
        verdict = "nginx added no p99 over direct in this run: no ratio (noise)"
    print(f"- {name}: median added p99 sloguard {sg:+.3f} ms, nginx {ng:+.3f} ms: {verdict}")
for name in ["rate2000", "rate5000"]:
    sg, ch = summary[(name, "sloguard")][0]["p99"], summary[(name, "sloguard-chain")][0]["p99"]
    if sg > 0:
        r = ch / sg
        verdict = f"ratio {r:.2f} (target <= 1.05: {'met' if r <= 1.05 else 'NOT met'})"
    else:
        verdict = "sloguard added no p99 over direct in this run: no ratio (noise)"
    print(f"- {name}: median added p99 with breaker + 3-upstream chain {ch:+.3f} ms vs plain sloguard {sg:+.3f} ms: {verdict}")
ratios = [s / n for s, n in zip(summary[("max", "sloguard")][2], summary[("max", "nginx")][2])]
r = med(ratios)
print(f"- max throughput sloguard/nginx, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {r:.2f} (target >= 1.0: {'met' if r >= 1.0 else 'NOT met'})")
print(f"- sloguard RSS: idle {idle_rss/1024:.1f} MiB (target <= 15 MiB: {'met' if idle_rss <= 15*1024 else 'NOT met'}), after the runs {loaded_rss/1024:.1f} MiB")
unread = []
for t in ["sloguard", "sloguard-chain"]:
    got = sum(v for r in range(1, rounds + 1) for k, v in oha("llm", r, t).get("statusCodeDistribution", {}).items() if k.startswith("2"))
    read = genai[t] > 0 and genai[t] >= 0.95 * got
    print(f"- {t} read the LLM calls: its gen_ai_client_token_usage (output) counted {genai[t]} calls "
          f"over the llm runs, oha got {got} 2xx ({'read' if read else 'NOT read'})")
    scanned = scans[t] >= 0.95 * got > 0
    print(f"- {t} scanned them for safety: its agent_responses_total counted {scans[t]} answers "
          f"over the llm runs ({'scanned' if scanned else 'NOT scanned'})")
    unread += [t] * (not read or not scanned)

print("\n### Against nginx (issue 26)\n")
print("Throughput: median over rounds of the per-round ratio. Added latency: median over rounds of proxy minus direct (ms).\n")
print("| measure | sloguard | floor | nginx | sloguard / nginx | floor / nginx | target |")
print("|---|---|---|---|---|---|---|")
for name, label in [("max", "max req/s, GET 1 KiB"), ("llm", "max req/s, LLM call")]:
    rps = {t: summary[(name, t)][2] for t in ("sloguard", "floor", "nginx")}
    sg = med(s / n for s, n in zip(rps["sloguard"], rps["nginx"]))
    fl = med(f / n for f, n in zip(rps["floor"], rps["nginx"]))
    print(f"| {label} | {med(rps['sloguard']):.0f} | {med(rps['floor']):.0f} | {med(rps['nginx']):.0f} | "
          f"{sg:.2f} ({'met' if sg >= 1.0 else 'NOT met'}) | {fl:.2f} | sloguard / nginx >= 1.0 |")
for name, rate in [("rate2000", "2,000"), ("rate5000", "5,000")]:
    for p in ("p99", "p99.9"):
        sg, fl, ng = (summary[(name, t)][0][p] for t in ("sloguard", "floor", "nginx"))
        ratio = lambda x: f"{x / ng:.2f}" if ng > 0 else "n/a"
        print(f"| added {p} at {rate} req/s | {sg:+.3f} | {fl:+.3f} | {ng:+.3f} | {ratio(sg)} ({'met' if sg <= ng else 'NOT met'}) | "
              f"{ratio(fl)} | sloguard <= nginx |")
print("\nn/a: nginx added nothing over direct at that percentile (noise), so no ratio; the verdict compares the added ms.")
# A sidecar that did not read (or scan) the calls measured less than the script says.
if unread:
    sys.exit(f"{', '.join(unread)}: the LLM calls were not all read and scanned (above)")
PY
if [ "$SCANS" -le 0 ] || [ "$CHAIN_SCANS" -le 0 ]; then
  echo "sloguard's safety detectors did not count the runs' answers: safety was not on" >&2
  exit 1
fi
if [ "$GENAI" -le 0 ]; then
  echo "sloguard's GenAI metrics did not count the LLM runs' calls: it did not read them" >&2
  exit 1
fi
