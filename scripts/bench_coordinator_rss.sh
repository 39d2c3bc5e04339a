#!/usr/bin/env bash
# The coordinator's own peak resident memory (VmHWM) and round times, with
# every hospital a separate `cohort client` process: unlike `cohort bench
# rounds`, which runs the hospitals in its own process, this measures the
# coordinator alone.
#
# Usage: scripts/bench_coordinator_rss.sh [COHORT_BINARY] [CLIENTS] [ROUNDS] [PARAMETERS]
# Defaults: target/release/cohort, 50 hospitals, 3 rounds, ~10^6 parameters
# (WDBC, one hidden layer). Extra coordinator flags in COORDINATOR_ARGS (e.g.
# "--update-memory-mb 16"). Linux only (/proc). Prints one JSON line.
set -euo pipefail
BIN=${1:-target/release/cohort}
CLIENTS=${2:-50}
ROUNDS=${3:-3}
PARAMETERS=${4:-1000000}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HIDDEN=$(( (PARAMETERS - 1) / 32 ))
WORK="$(mktemp -d /tmp/cohort-rss.XXXXXX)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" data split "$ROOT/data/wdbc.csv" --parts "$CLIENTS" --out "$WORK/parts" \
  --label diagnosis --seed 1 --json >/dev/null
sed -e "s/hidden = \[32, 16\]/hidden = [$HIDDEN]/" -e "s/rounds = 20/rounds = $ROUNDS/" \
    -e "s/min_clients = 3/min_clients = $CLIENTS/" -e "s/clients_per_round = 3/clients_per_round = $CLIENTS/" \
    -e "s/local_epochs = 2/local_epochs = 1/" -e "s/round_timeout_secs = 120/round_timeout_secs = 600/" \
    "$ROOT/examples/wdbc-mlp.toml" > "$WORK/job.toml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$BIN" coordinator --insecure --listen "127.0.0.1:$PORT" --data-dir "$WORK/coord" \
  --poll-timeout-secs 1 ${COORDINATOR_ARGS:-} 2>"$WORK/coordinator.log" &
COORDINATOR=$!
PIDS+=("$COORDINATOR")
# Submitting before the coordinator listens fails the run.
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
for file in "$WORK"/parts/hospital_*.csv; do
  "$BIN" client --insecure --coordinator "$URL" --name "$(basename "$file" .csv)" \
    --data "$file" 2>/dev/null &
  PIDS+=("$!")
done
"$BIN" job submit "$WORK/job.toml" --insecure --coordinator "$URL" --wait --json 2>/dev/null |
  python3 -c '
import json, sys
job = json.load(sys.stdin)
rss_kb = int(next(l.split()[1] for l in open("/proc/'"$COORDINATOR"'/status") if l.startswith("VmHWM:")))
print(json.dumps({"clients": '"$CLIENTS"', "parameters": 32 * '"$HIDDEN"' + 1,
  "coordinator_args": "'"${COORDINATOR_ARGS:-}"'", "state": job["state"],
  "round_s": [round(r["duration_secs"], 3) for r in job["rounds"]],
  "coordinator_peak_rss_mb": round(rss_kb / 1024, 1)}))'
