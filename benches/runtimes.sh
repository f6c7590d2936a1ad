#!/usr/bin/env bash
# Which tokio runtime serves a proxy best: the floor (examples/floor_proxy.rs, a bare hyper proxy)
# and sloguard (one plain route), each on the runtimes it can run, side by side in one run.
#
#   bash benches/runtimes.sh        # ROUNDS=3 rounds of DURATION=3s closed-loop runs; bench-results/runtimes/
#
# One core: the proxies and the simulated upstream pinned to core 1, the load (oha, CONNS
# connections, 1 KiB GET) on core 0; tokio's work-stealing scheduler with one worker against a
# one-thread runtime. Two cores: nothing pinned (the load shares the cores, so this compares
# runtimes with each other, not with the one-core figures); two work-stealing workers against two
# per-core one-thread runtimes (and sloguard on one thread). Every target runs once per round,
# back to back; the summary gives each one's median requests a second and p99.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
OUT=${OUT:-bench-results/runtimes}
UP_PORT=18580
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
# The sidecar alone, as it ships (see the other scripts).
cargo build --release --bin sloguard
cargo build --release --example sim_upstream --example floor_proxy

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

declare -A PORT
port=18581
# target name, cores (1: pinned to core 1; 2: unpinned), then the command's environment and argv.
start() {
  local name=$1 cores=$2; shift 2
  PORT[$name]=$port
  local pin=(); [ "$cores" = 1 ] && pin=(taskset -c 1)
  if [ "${name%%-*}" = floor ]; then
    env "$@" "${pin[@]}" target/release/examples/floor_proxy "127.0.0.1:$port" "http://127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
  else
    cat >"$OUT/$name.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:$((port + 100))}
listeners:
  - {name: egress, bind: 127.0.0.1:$port, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
    env RUST_LOG=warn "$@" "${pin[@]}" target/release/sloguard run --config "$OUT/$name.yaml" 2>"$OUT/$name.log" &
  fi
  PIDS+=($!)
  port=$((port + 1))
}

run_layout() { # cores targets...
  local cores=$1; shift
  for t in "$@"; do wait_port "${PORT[$t]}"; done
  for t in "$@"; do taskset_load "$cores" "$t" warmup -z 1s; done
  for round in $(seq "$ROUNDS"); do
    for t in "$@"; do echo "$cores core(s), round $round: $t"; taskset_load "$cores" "$t" "r$round" -z "$DURATION"; done
  done
}
taskset_load() { # cores target run oha-args...
  local cores=$1 t=$2 run=$3; shift 3
  local pin=(); [ "$cores" = 1 ] && pin=(taskset -c 0)
  "${pin[@]}" oha --no-tui --output-format json -c "$CONNS" "$@" "http://127.0.0.1:${PORT[$t]}/bytes/1024" >"$OUT/$t-$run.json"
}

# --- one core ----------------------------------------------------------------------------------
TOKIO_WORKER_THREADS=1 taskset -c 1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
UP_PID=$!
PIDS+=($UP_PID)
wait_port $UP_PORT
ONE=(floor-work-stealing-1 floor-one-thread-1 sloguard-work-stealing-1 sloguard-one-thread-1)
start floor-work-stealing-1 1 FLOOR_RUNTIME=multi TOKIO_WORKER_THREADS=1
start floor-one-thread-1 1 FLOOR_RUNTIME=current
start sloguard-work-stealing-1 1 SLOGUARD_RUNTIME=work-stealing TOKIO_WORKER_THREADS=1
start sloguard-one-thread-1 1 SLOGUARD_RUNTIME=one-thread
run_layout 1 "${ONE[@]}"
cleanup
PIDS=()

# --- two cores ---------------------------------------------------------------------------------
TOKIO_WORKER_THREADS=2 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)
wait_port $UP_PORT
TWO=(floor-work-stealing-2 floor-per-core-2 sloguard-work-stealing-2 sloguard-per-core-2 sloguard-one-thread-2)
start floor-work-stealing-2 2 FLOOR_RUNTIME=multi TOKIO_WORKER_THREADS=2
start floor-per-core-2 2 FLOOR_RUNTIME=per-core TOKIO_WORKER_THREADS=2
start sloguard-work-stealing-2 2 SLOGUARD_RUNTIME=work-stealing TOKIO_WORKER_THREADS=2
start sloguard-per-core-2 2 SLOGUARD_RUNTIME=per-core TOKIO_WORKER_THREADS=2
start sloguard-one-thread-2 2 SLOGUARD_RUNTIME=one-thread
run_layout 2 "${TWO[@]}"

python3 - "$OUT" "$ROUNDS" "${ONE[@]}" -- "${TWO[@]}" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rest = sys.argv[3:]
split = rest.index("--")
layouts = [("one core (pinned; load on the other)", rest[:split]), ("two cores (shared with the load)", rest[split + 1:])]
def runs(t): return [json.load(open(f"{out}/{t}-r{r}.json")) for r in range(1, rounds + 1)]
def rps(d): return d["summary"]["requestsPerSec"]
print(f"Closed loop, 1 KiB GET; medians over {rounds} rounds, every target once per round.\n")
for title, targets in layouts:
    print(f"{title}:\n")
    print("| target | req/s | p99 ms | vs work-stealing of its kind |")
    print("|---|---|---|---|")
    med = {t: statistics.median(rps(d) for d in runs(t)) for t in targets}
    for t in targets:
        p99 = statistics.median(d["latencyPercentiles"]["p99"] * 1000 for d in runs(t))
        kind, cores = t.split("-")[0], t.rsplit("-", 1)[1]
        base = med.get(f"{kind}-work-stealing-{cores}")
        print(f"| {t} | {med[t]:.0f} | {p99:.3f} | {med[t] / base:.2f} |")
    print()
PY
