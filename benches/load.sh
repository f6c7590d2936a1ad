#!/usr/bin/env bash
# End-to-end load bench: the simulated upstream direct, through sloguard, and through nginx, side by
# side in one invocation on loopback.
#
#   bash benches/load.sh            # DURATION=10s per run by default; results in bench-results/
#
# Layout (2-core machine): the upstream and the proxy under test share core 1, each with one
# worker (sloguard: one tokio worker; nginx: one worker process); the load generator (oha) runs
# on core 0. Open-loop runs at 2,000 and 5,000 req/s with latency correction, 1 KiB responses;
# a closed-loop max-throughput run; and a streaming run (SSE, 50 chunks) for time to first byte.
# Added latency = proxy percentile minus direct percentile, from runs taken back to back.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
OUT=${OUT:-bench-results}
CONNS=${CONNS:-64}
UP_PORT=18080 SG_PORT=18081 NGX_PORT=18082 ADMIN_PORT=18090
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- tools -----------------------------------------------------------------------------------
if ! command -v nginx >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release --bin sloguard --example sim_upstream --example ttfb

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- the three servers -----------------------------------------------------------------------
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)

cat >"$OUT/sloguard.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$ADMIN_PORT}
listeners:
  - {name: egress, bind: 127.0.0.1:$SG_PORT, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/sloguard run --config "$OUT/sloguard.yaml" 2>"$OUT/sloguard.log" &
SG_PID=$!
PIDS+=($SG_PID)

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

wait_port $UP_PORT; wait_port $SG_PORT; wait_port $NGX_PORT
sleep 0.5
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SG_PID/status"; }
IDLE_RSS=$(rss_kib)

declare -A URL=([direct]=http://127.0.0.1:$UP_PORT [sloguard]=http://127.0.0.1:$SG_PORT [nginx]=http://127.0.0.1:$NGX_PORT)
TARGETS=(direct sloguard nginx)

load() { # name target extra-args...
  local name=$1 target=$2; shift 2
  taskset -c 0 oha --no-tui --output-format json -c "$CONNS" "$@" "${URL[$target]}/bytes/1024" >"$OUT/$name-$target.json"
}

echo "warm-up"
for t in "${TARGETS[@]}"; do load warmup "$t" -z 2s; done
for rate in 2000 5000; do
  for t in "${TARGETS[@]}"; do
    echo "rate $rate: $t"; load "rate$rate" "$t" -z "$DURATION" -q "$rate" --latency-correction
  done
done
for t in "${TARGETS[@]}"; do echo "max: $t"; load max "$t" -z "$DURATION"; done
for t in "${TARGETS[@]}"; do
  echo "sse: $t"
  taskset -c 0 target/release/examples/ttfb "${URL[$t]}/sse/50?gap_ms=1" 1000 20 >"$OUT/sse-$t.json"
done
LOADED_RSS=$(rss_kib)

python3 - "$OUT" "$IDLE_RSS" "$LOADED_RSS" <<'PY' | tee "$OUT/summary.md"
import json, sys
out, idle_rss, loaded_rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def run(name, t): return json.load(open(f"{out}/{name}-{t}.json"))
def pct(d, p): return d["latencyPercentiles"][p] * 1000
print("| run | target | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | req/s | failed |")
print("|---|---|---|---|---|---|---|---|---|---|")
ratios = {}
for name in ["rate2000", "rate5000", "max"]:
    direct = run(name, "direct")
    added = {}
    for t in ["direct", "sloguard", "nginx"]:
        d = run(name, t)
        codes = d.get("statusCodeDistribution", {})
        # Requests still in flight when a timed run ends are aborted by oha: not failures.
        errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
        bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
        a = [pct(d, p) - pct(direct, p) for p in ("p50", "p99", "p99.9")]
        added[t] = a
        print(f"| {name} | {t} | {pct(d,'p50'):.3f} | {pct(d,'p99'):.3f} | {pct(d,'p99.9'):.3f} | "
              f"{a[0]:+.3f} | {a[1]:+.3f} | {a[2]:+.3f} | {d['summary']['requestsPerSec']:.0f} | {bad} |")
    ratios[name] = (added, run(name, "sloguard")["summary"]["requestsPerSec"] / run(name, "nginx")["summary"]["requestsPerSec"])
print()
print("| streaming (SSE, 50 chunks) | p50 TTFB ms | p99 TTFB ms | added p50 | added p99 |")
print("|---|---|---|---|---|")
sse = {t: json.load(open(f"{out}/sse-{t}.json")) for t in ["direct", "sloguard", "nginx"]}
for t, d in sse.items():
    print(f"| {t} | {d['p50_ms']:.3f} | {d['p99_ms']:.3f} | {d['p50_ms']-sse['direct']['p50_ms']:+.3f} | {d['p99_ms']-sse['direct']['p99_ms']:+.3f} |")
print()
for name in ["rate2000", "rate5000"]:
    added, _ = ratios[name]
    ng, sg = added["nginx"][1], added["sloguard"][1]
    r = sg / ng if ng > 0 else float("inf")
    print(f"- {name}: added p99 sloguard {sg:+.3f} ms vs nginx {ng:+.3f} ms: ratio {r:.2f} (target <= 1.0: {'met' if r <= 1.0 else 'NOT met'})")
print(f"- max throughput ratio sloguard/nginx: {ratios['max'][1]:.2f} (target >= 1.0: {'met' if ratios['max'][1] >= 1.0 else 'NOT met'})")
print(f"- sloguard RSS: idle {idle_rss/1024:.1f} MiB (target <= 15 MiB: {'met' if idle_rss <= 15*1024 else 'NOT met'}), after the runs {loaded_rss/1024:.1f} MiB")
PY
