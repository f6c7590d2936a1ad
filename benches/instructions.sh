#!/usr/bin/env bash
# The hot path's regression guard: instructions per proxied request, counted by callgrind, against
# the checked-in baseline (benches/instructions.baseline). Instruction counts do not move with a
# noisy neighbour the way timings do, so CI can hold them to a tolerance.
#
#   bash benches/instructions.sh             # measure and compare; exit 1 on a regression
#   UPDATE=1 bash benches/instructions.sh    # measure and write the baseline
#
# One process each, one core's runtime (TOKIO_WORKER_THREADS=1), in front of a simulated upstream
# that answers at once: the floor (examples/floor_proxy.rs, a bare hyper proxy: for reference,
# not guarded), sloguard with one plain route ("plain": 1 KiB GET, POST with a 1 KiB body), and
# sloguard with a chat completion answered as JSON through the `llm` role with safety on and an
# SLO on each of its SLIs ("llm"); and nginx, where it is installed, proxying the same three
# requests (for reference, not guarded). CG_N requests of each kind after a warm-up of 300, 4
# connections; counters zeroed and dumped around the load with callgrind_control. A measured
# count more than TOLERANCE (default 0.03) above its baseline fails; more than TOLERANCE below
# says to lower the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."

CG_N=${CG_N:-2000}
TOLERANCE=${TOLERANCE:-0.03}
OUT=${OUT:-bench-results/instructions}
BASELINE_FILE=benches/instructions.baseline
UP_PORT=18460 FLOOR_PORT=18461 PLAIN_PORT=18462 LLM_PORT=18463 NGINX_PORT=18464
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

command -v valgrind >/dev/null || {
  as_root=(env DEBIAN_FRONTEND=noninteractive)
  if [ "$(id -u)" -ne 0 ]; then as_root=(sudo env DEBIAN_FRONTEND=noninteractive); fi
  "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq valgrind >/dev/null
}
command -v oha >/dev/null || cargo install oha --locked --version 1.16.0
export PATH="$HOME/.cargo/bin:$PATH"
# The sidecar alone, as it ships: built in one go with the examples it would get the
# dev-dependencies' features (tokio's test-util clock on every Instant::now) and count more.
cargo build --release --locked --bin sloguard
cargo build --release --locked --example sim_upstream --example floor_proxy

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }
# A port already taken would have another process measured.
for port in $UP_PORT $FLOOR_PORT $PLAIN_PORT $LLM_PORT $NGINX_PORT 18470 18471; do
  if (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use: stop what holds it" >&2; exit 1; fi
done

SIM_FIRST_CHUNK_MS=0 SIM_CHUNK_MS=0 TOKIO_WORKER_THREADS=1 target/release/examples/sim_upstream 127.0.0.1:$UP_PORT >/dev/null &
PIDS+=($!)
cat >"$OUT/plain.yaml" <<YAML
agent: bench
admin: {bind: 127.0.0.1:18470}
listeners:
  - {name: egress, bind: 127.0.0.1:$PLAIN_PORT, role: llm, route: llm}
routes:
  llm: {upstreams: [sim]}
upstreams:
  sim: {url: http://127.0.0.1:$UP_PORT, protocol: openai}
YAML
# The same route with safety on (every built-in detector) and an SLO on each SLI of an `llm`
# listener (benches/guards.yaml), as in benches/load.sh.
{
  sed "s/18470/18471/; s/$PLAIN_PORT/$LLM_PORT/" "$OUT/plain.yaml"
  cat benches/guards.yaml
} >"$OUT/llm.yaml"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$OUT/body.txt"
echo '{"model":"sim-gpt","messages":[{"role":"user","content":"Summarize the ticket."}],"stream":false}' >"$OUT/chat.json"

declare -A PID
start() { # name port command...
  local name=$1 port=$2; shift 2
  rm -f "$OUT/cg-$name.out"*
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-$name.out" "$@" 2>"$OUT/cg-$name.log" &
  PID[$name]=$!
  PIDS+=($!)
  wait_port "$port"
}
# measure name kind url oha-args...: warm-up, zero, CG_N requests, dump named KIND.
measure() {
  local name=$1 kind=$2 url=$3; shift 3
  oha --no-tui -c 4 -n 300 "$@" "$url" >/dev/null
  callgrind_control -z "${PID[$name]}" >/dev/null 2>&1 || { echo "$name: callgrind_control -z failed" >&2; exit 1; }
  oha --no-tui -c 4 -n "$CG_N" "$@" "$url" >"$OUT/oha-$name-$kind.txt"
  callgrind_control -d "$kind" "${PID[$name]}" >/dev/null 2>&1 || { echo "$name: callgrind_control -d failed" >&2; exit 1; }
  grep -q "\[200\] $CG_N responses" "$OUT/oha-$name-$kind.txt" || { echo "$name $kind: not every request answered 200" >&2; cat "$OUT/oha-$name-$kind.txt" >&2; exit 1; }
}

wait_port $UP_PORT
start floor $FLOOR_PORT target/release/examples/floor_proxy 127.0.0.1:$FLOOR_PORT http://127.0.0.1:$UP_PORT
start plain $PLAIN_PORT target/release/sloguard run --config "$OUT/plain.yaml"
start llm $LLM_PORT target/release/sloguard run --config "$OUT/llm.yaml"
# nginx, where it is installed (benches/load.sh installs it): for reference, not guarded. One
# process (no master), the same proxying as load.sh's.
NAMES=(floor plain)
rm -f "$OUT/cg-nginx.out"*
NGINX=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
if [ -n "$NGINX" ]; then
  cat >"$OUT/nginx.conf" <<NGX
worker_processes 1;
master_process off;
daemon off;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  upstream sim { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://sim; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGX
  # Best effort: an nginx that does not start (say, its temp directories not writable) leaves
  # the guard as it is, with no nginx column.
  valgrind --tool=callgrind --callgrind-out-file="$OUT/cg-nginx.out" "$NGINX" -c "$OUT/nginx.conf" \
    -p "$OUT" 2>"$OUT/cg-nginx.log" &
  PID[nginx]=$!
  PIDS+=($!)
  for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/$NGINX_PORT) 2>/dev/null && break; sleep 0.2; done
  if (echo >/dev/tcp/127.0.0.1/$NGINX_PORT) 2>/dev/null; then
    NAMES+=(nginx)
  else
    echo "nginx did not start (see $OUT/cg-nginx.log, $OUT/nginx-error.log): no nginx column" >&2
    NGINX=
  fi
fi
declare -A PORT=([floor]=$FLOOR_PORT [plain]=$PLAIN_PORT [nginx]=$NGINX_PORT)
for name in "${NAMES[@]}"; do
  measure $name GET "http://127.0.0.1:${PORT[$name]}/bytes/1024"
  measure $name POST "http://127.0.0.1:${PORT[$name]}/bytes/1024" -m POST -D "$OUT/body.txt" -T application/json
done
measure llm JSON "http://127.0.0.1:$LLM_PORT/v1/chat/completions" -m POST -D "$OUT/chat.json" -T application/json
if [ -n "$NGINX" ]; then
  measure nginx JSON "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" -m POST -D "$OUT/chat.json" -T application/json
fi

# Counts move with the compiler and the CPU's instruction set (SIMD paths in memchr, httparse,
# glibc): the baseline names both, and is only held against a build of the same.
# (Not every CPU names a model in /proc/cpuinfo: the architecture stands in for it.)
CPU="$( (grep -m1 '^model name' /proc/cpuinfo || true) | cut -d: -f2 | xargs)"
TOOLCHAIN="$(rustc -V | cut -d' ' -f1-2) on ${CPU:-$(uname -m)}"
python3 - "$OUT" "$CG_N" "$BASELINE_FILE" "$TOLERANCE" "${UPDATE:-}" "$TOOLCHAIN" <<'PY' | tee "$OUT/summary.md"
import glob, sys
out, n, baseline_file, tolerance, update, toolchain = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5], sys.argv[6]
def per_request(name, kind, required=True):
    for f in sorted(glob.glob(f"{out}/cg-{name}.out.*")):
        text = open(f).read()
        if f"Trigger: dump {kind}\n" in text:
            return round(int(next(l for l in text.splitlines() if l.startswith("summary:")).split()[1]) / n)
    if required:
        sys.exit(f"no callgrind dump {kind} for {name}")
measured = {(name, kind): per_request(name, kind)
            for name, kind in [("floor", "GET"), ("floor", "POST"), ("plain", "GET"), ("plain", "POST"), ("llm", "JSON")]}
guarded = [k for k in measured if k[0] != "floor"]
# nginx's counts, where it ran (references, like the floor's).
nginx = {kind: per_request("nginx", kind, required=False) for kind in ("GET", "POST", "JSON")}
cell = lambda v: v if v else "–"
# The baseline holds one section per compiler and CPU (counts move with both); UPDATE=1 rewrites
# this build's section and keeps the others.
import os
sections, current = {}, None
for number, raw in enumerate(open(baseline_file), 1):
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    where = f"{baseline_file}:{number}"
    if line.startswith("[") and line.endswith("]"):
        current = line[1:-1]
        if current in sections:
            sys.exit(f"{where}: the section [{current}] comes twice")
        sections[current] = {}
        continue
    fields = line.split()
    if current is None or len(fields) != 3 or not fields[2].isdigit():
        sys.exit(f"{where}: expected NAME KIND COUNT under a [compiler on CPU] section, got {line!r}")
    sections[current][(fields[0], fields[1])] = int(fields[2])
if update:
    sections[toolchain] = {k: measured[k] for k in guarded}
    text = "# Instructions per request (benches/instructions.sh), per compiler and CPU; UPDATE=1\n"
    text += "# rewrites the section of the build it measures.\n"
    for machine, counts in sections.items():
        text += f"\n[{machine}]\n" + "".join(f"{name} {kind} {count}\n" for (name, kind), count in counts.items())
    # Written whole, then moved over the old file: an interrupted update loses no section.
    with open(baseline_file + ".new", "w") as f:
        f.write(text)
    os.replace(baseline_file + ".new", baseline_file)
baseline = sections.get(toolchain)
if baseline is None:
    print("| request | nginx | floor | sloguard | sloguard / floor |")
    print("|---|---|---|---|---|")
    for name, kind in guarded:
        m, floor = measured[(name, kind)], measured.get(("floor", kind))
        print(f"| {name} {kind} | {cell(nginx[kind])} | {cell(floor)} | {m} | {f'{m / floor:.3f}' if floor else '–'} |")
    print(f"\nNo baseline for {toolchain} (it has: {', '.join(sections) or 'none'}): the counts are")
    print("shown, not held (measure one here with UPDATE=1 from a commit known good).")
    sys.exit(0)
print("| request | nginx | floor | sloguard | baseline | sloguard / baseline | sloguard / floor |")
print("|---|---|---|---|---|---|---|")
failed = False
for name, kind in guarded:
    m, b = measured[(name, kind)], baseline.get((name, kind))
    floor = measured.get(("floor", kind))
    if b is None:
        print(f"| {name} {kind} | {cell(nginx[kind])} | {cell(floor)} | {m} | – | not held: no count in the baseline's section | – |")
        continue
    verdict = ""
    if m > b * (1 + tolerance):
        verdict, failed = " REGRESSION", True
    elif m < b * (1 - tolerance):
        verdict = " (below the baseline: lower it with UPDATE=1)"
    ratio = f"{m / floor:.3f}" if floor else "–"
    print(f"| {name} {kind} | {cell(nginx[kind])} | {cell(floor)} | {m} | {b} | {m / b:.3f}{verdict} | {ratio} |")
print(f"\nBaseline: {toolchain}.")
sys.exit(1 if failed else 0)
PY
