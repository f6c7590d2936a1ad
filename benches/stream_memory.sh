#!/usr/bin/env bash
# The sidecar's memory idle and with a thousand SSE streams open (issue 26: idle RSS <= 15 MiB,
# 1,000 open streams <= 64 MiB).
#
#   bash benches/stream_memory.sh   # ROUNDS=3 rounds of N=1000 streams; results in bench-results/
#
# Per round a fresh sidecar as it ships (role `llm`, one route to the simulated provider,
# `protocol: openai`, safety on with every built-in detector, an SLO on each SLI of the `llm`
# role, everything else default; TOKIO_WORKER_THREADS=WORKERS, by default 1: the
# one-thread runtime, as the deployment's one-CPU limit gives it), on core 1 beside the provider;
# the load on core 0.
# - Idle: once its admin port answers and SETTLE seconds more, its VmRSS from /proc/PID/status.
# - Streams: N concurrent streamed Chat Completions (`"stream": true`, examples/llm_load.rs in
#   closed loop, one call per connection), which the provider keeps open for about 12 s
#   (SIM_FIRST_CHUNK_MS=1000, then 20 content chunks and 3 closing events SIM_CHUNK_MS=500
#   apart). Once `ss` counts N established client connections on the sidecar's port, VmRSS is
#   sampled SAMPLES times 0.5 s apart, each sample taken only while all N are still open; the
#   round reports the largest. After the streams end: VmHWM (the peak over the whole round) and
#   VmRSS. The load reports how many streams delivered content and how many failed.
# Medians over rounds, in MiB (1 MiB = 1,024 KiB), into bench-results/stream-memory-summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
SETTLE=${SETTLE:-1}
SAMPLES=${SAMPLES:-10}
OUT=${OUT:-bench-results}
UP_PORT=18480 PROXY_PORT=18481 ADMIN_PORT=18490
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Each stream is a socket at the load, two at the sidecar (client and upstream) and one at the
# provider.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * N + 256)) ]; then
  echo "open file limit $(ulimit -n) is too low for $N streams" >&2
  exit 1
fi
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and measure slower.
cargo build --release --bin sloguard
cargo build --release --example sim_upstream --example llm_load

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
streams_open() { ss -Htn state established "( sport = :$PROXY_PORT )" | wc -l; }
upstream_open() { ss -Htn state established "( dport = :$UP_PORT )" | wc -l; }
gauge() {
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^sloguard_client_connections\{/ && /listener="egress"/ {print $NF}'
}

SIM_FIRST_CHUNK_MS=1000 SIM_CHUNK_MS=500 SIM_CHUNKS=20 TOKIO_WORKER_THREADS=1 taskset -c 1 \
  target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)
wait_port $UP_PORT

cat >"$OUT/stream-memory.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$ADMIN_PORT}
listeners:
  - {name: egress, bind: 127.0.0.1:$PROXY_PORT, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
$(cat benches/guards.yaml)
YAML

rows=()
for round in $(seq "$ROUNDS"); do
  RUST_LOG=warn TOKIO_WORKER_THREADS=$WORKERS taskset -c 1 target/release/sloguard run \
    --config "$OUT/stream-memory.yaml" 2>"$OUT/stream-memory-sloguard.log" &
  pid=$!
  PIDS+=($pid)
  # Start-up has settled: the admin port answers, then SETTLE seconds with nothing to do.
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" || { echo "admin port never answered" >&2; exit 1; }
  sleep "$SETTLE"
  idle=$(kib $pid VmRSS)

  CONCURRENCY=$N taskset -c 0 timeout 120 target/release/examples/llm_load \
    "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" 0 2 >"$OUT/stream-memory-load-r$round.json" &
  load=$!
  PIDS+=($load)
  # Every stream open: N established client connections on the sidecar's port.
  open=0
  for _ in $(seq 100); do open=$(streams_open); [ "$open" -ge "$N" ] && break; sleep 0.1; done
  if [ "$open" -lt "$N" ]; then echo "round $round: only $open of $N streams opened" >&2; exit 1; fi
  loaded=0 taken=0 client=0 upstream=0 gauge_open=
  for _ in $(seq "$SAMPLES"); do
    rss=$(kib $pid VmRSS)
    open=$(streams_open)
    # A sample counts only if no stream had ended by the time it was taken.
    [ "$open" -ge "$N" ] || break
    taken=$((taken + 1)) client=$open
    [ "$rss" -gt "$loaded" ] && loaded=$rss
    upstream=$(upstream_open) gauge_open=$(gauge)
    sleep 0.5
  done
  if [ "$taken" -eq 0 ]; then echo "round $round: the streams ended before a sample" >&2; exit 1; fi
  wait $load || { echo "round $round: the load failed" >&2; exit 1; }
  hwm=$(kib $pid VmHWM) after=$(kib $pid VmRSS)
  # Safety read the streams: its responses counter against the streams opened.
  scanned=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^agent_responses_total/ {s += $NF} END {printf "%d\n", s}')
  if [ "$scanned" -lt $((N * 95 / 100)) ]; then echo "round $round: safety read only $scanned of $N streams" >&2; exit 1; fi
  kill $pid; wait $pid 2>/dev/null || true
  result=$(cat "$OUT/stream-memory-load-r$round.json")
  echo "round $round: idle $idle KiB, $N streams open $loaded KiB ($taken samples; ss: $client client, $upstream upstream; gauge $gauge_open), VmHWM $hwm KiB, after $after KiB; load: $result"
  rows+=("$idle $loaded $hwm $after $taken $client $upstream ${gauge_open:-0} $result")
done

printf '%s\n' "${rows[@]}" >"$OUT/stream-memory-rounds.txt"
python3 - "$OUT/stream-memory-rounds.txt" "$N" "$ROUNDS" "$WORKERS" <<'PY' | tee "$OUT/stream-memory-summary.md"
import json, statistics, sys
n, rounds, workers = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = []
for line in open(sys.argv[1]).read().splitlines():
    f = line.split(" ", 8)
    rows.append(dict(idle=int(f[0]), loaded=int(f[1]), hwm=int(f[2]), after=int(f[3]), taken=int(f[4]),
                     client=int(f[5]), upstream=int(f[6]), gauge=float(f[7]), load=json.loads(f[8])))
mib = lambda k: k / 1024
med = statistics.median
print(f"# sloguard's memory, idle and with {n} SSE streams open\n")
print(f"Role `llm`, safety and an SLO on each SLI on, {workers} tokio worker(s). Streams: streamed Chat Completions the simulated")
print(f"provider holds open ~12 s (1 s to the first content chunk, then 0.5 s between events). Median of {rounds} rounds, MiB.\n")
print("| measure | median | per round | target | |")
print("|---|---|---|---|---|")
for key, label, target in [("idle", "idle VmRSS", 15), ("loaded", f"VmRSS, {n} streams open (largest sample)", 64),
                           ("hwm", "VmHWM (peak, whole round)", 64), ("after", "VmRSS right after the streams ended", None)]:
    vals = [mib(r[key]) for r in rows]
    m = med(vals)
    verdict = "" if target is None else ("met" if m <= target else "NOT met")
    print(f"| {label} | {m:.1f} | {', '.join(f'{v:.1f}' for v in vals)} | {'' if target is None else f'<= {target}'} | {verdict} |")
print()
for i, r in enumerate(rows, 1):
    l = r["load"]
    print(f"- round {i}: {r['taken']} samples with all streams open; at the last, `ss` counted {r['client']} established "
          f"client connections on the sidecar's port and {r['upstream']} to the provider's, `sloguard_client_connections` "
          f"{r['gauge']:.0f}; {l['n']} streams delivered content, {l['errors']} failed, a stream lasted {l['end_p50_ms'] / 1000:.1f} s (median)")
PY
