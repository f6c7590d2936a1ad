#!/usr/bin/env bash
# An older sloguard build against this one, with the floor beside them, side by side in one run:
# closed-loop maximum throughput of a 1 KiB GET and of a chat completion (JSON) through an `llm`
# route. The proxies and the simulated upstream are pinned to core 1, the load (oha, CONNS
# connections) to core 0; each round runs every target back to back, so a noisy neighbour hits
# them alike. The summary gives each target's median and the median of the per-round ratios.
#
#   BASELINE=/path/to/older/sloguard bash benches/before_after.sh   # ROUNDS=5 of DURATION=3s
#
# An older build: `git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release
# --bin sloguard)`, then BASELINE=/tmp/old/target/release/sloguard.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${BASELINE:?set BASELINE to an older sloguard binary}"
DURATION=${DURATION:-3s}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
OUT=${OUT:-bench-results/before-after}
UP_PORT=18660 OLD_PORT=18661 NEW_PORT=18662 FLOOR_PORT=18663
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
# The sidecar alone, as it ships (see the other scripts).
cargo build --release --locked --bin sloguard
cargo build --release --locked --example sim_upstream --example floor_proxy

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
for port in $UP_PORT $OLD_PORT $NEW_PORT $FLOOR_PORT $((OLD_PORT + 100)) $((NEW_PORT + 100)); do
  if (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use: stop what holds it" >&2; exit 1; fi
done

taskset -c 1 env SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 TOKIO_WORKER_THREADS=1 \
  target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null 2>&1 &
PIDS+=($!)
wait_port $UP_PORT
config() { # port
  cat <<YAML
agent: bench
admin: {bind: 127.0.0.1:$(($1 + 100))}
listeners:
  - {name: egress, bind: 127.0.0.1:$1, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
}
config $OLD_PORT >"$OUT/old.yaml"
config $NEW_PORT >"$OUT/new.yaml"
RUST_LOG=warn taskset -c 1 "$BASELINE" run --config "$OUT/old.yaml" >"$OUT/old.log" 2>&1 &
PIDS+=($!)
RUST_LOG=warn taskset -c 1 target/release/sloguard run --config "$OUT/new.yaml" >"$OUT/new.log" 2>&1 &
PIDS+=($!)
taskset -c 1 target/release/examples/floor_proxy 127.0.0.1:$FLOOR_PORT http://127.0.0.1:$UP_PORT >/dev/null 2>&1 &
PIDS+=($!)
for port in $OLD_PORT $NEW_PORT $FLOOR_PORT; do wait_port $port; done

CHAT='{"model":"sim-gpt","messages":[{"role":"user","content":"Summarize the ticket."}],"stream":false}'
rps() { # duration [oha args...]
  local duration=$1; shift
  taskset -c 0 oha --no-tui --output-format json -c "$CONNS" -z "$duration" "$@" \
    | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["summary"]["requestsPerSec"]))'
}
# A warm-up each: connections made, pools filled.
for port in $OLD_PORT $NEW_PORT $FLOOR_PORT; do rps 1s "http://127.0.0.1:$port/bytes/1024" >/dev/null; done
: >"$OUT/runs.txt"
for r in $(seq "$ROUNDS"); do
  for t in old:$OLD_PORT new:$NEW_PORT floor:$FLOOR_PORT; do
    name=${t%%:*} port=${t##*:}
    get=$(rps "$DURATION" "http://127.0.0.1:$port/bytes/1024")
    llm=$(rps "$DURATION" -m POST -T application/json -d "$CHAT" "http://127.0.0.1:$port/v1/chat/completions")
    echo "$r $name $get $llm" | tee -a "$OUT/runs.txt"
  done
done

python3 - "$OUT/runs.txt" <<'PY' | tee "$OUT/summary.md"
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r, name, get, llm = line.split()
    runs.setdefault(name, {})[int(r)] = (int(get), int(llm))
rounds = sorted(runs["new"])
def med(name, i):
    return statistics.median(runs[name][r][i] for r in rounds)
def ratio(a, b, i):
    return statistics.median(runs[a][r][i] / runs[b][r][i] for r in rounds)
print(f"Closed loop, medians of {len(rounds)} rounds (req/s); ratios: median of the per-round ratios.\n")
print("| request | older build | this build | floor | this / older | this / floor |")
print("|---|---|---|---|---|---|")
for i, label in ((0, "GET 1 KiB"), (1, "chat completion (JSON)")):
    print(f"| {label} | {med('old', i):,.0f} | {med('new', i):,.0f} | {med('floor', i):,.0f} "
          f"| {ratio('new', 'old', i):.2f} | {ratio('new', 'floor', i):.2f} |")
PY
