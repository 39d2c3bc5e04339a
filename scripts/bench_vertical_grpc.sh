#!/usr/bin/env bash
# Vertical split learning run by the coordinator over real gRPC, in real
# processes on loopback: one `cohort coordinator`, three `cohort client`s
# holding WDBC split by columns (`cohort data split-vertical`, seed 11, 90% of
# the patients at each site), and `cohort job submit` of
# examples/wdbc-vertical.toml with and without the max-norm defence. Beside it,
# the centralized model on the same held-out shared rows: `cohort vertical`
# (one process) on the same site files, whose `centralized` line trains the
# same network on the joined columns in one place.
#
# Prints each job's `job status` and the centralized line; a Markdown row per
# job goes to stdout at the end. Plaintext gRPC on 127.0.0.1 (--insecure) to
# keep the kit set-up out of the timing.
#
# Usage: scripts/bench_vertical_grpc.sh [PORT]   (default 7391)
# Uses $COHORT_BIN if set, else builds the dev binary with cargo.
set -euo pipefail

PORT="${1:-7391}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${COHORT_BIN:-}" ]]; then
  cargo build -q --bin cohort --manifest-path "$ROOT/Cargo.toml"
  COHORT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cohort"
fi
WORK="$(mktemp -d -t cohort-vertical-bench-XXXX)"
URL="http://127.0.0.1:$PORT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cd "$WORK"
"$COHORT_BIN" data split-vertical "$ROOT/data/wdbc.csv" --sites 3 --out sites \
  --id patient_id --label diagnosis --seed 11 >&2
"$COHORT_BIN" coordinator --insecure --listen "127.0.0.1:$PORT" --data-dir coord \
  >coord.log 2>&1 &
PIDS+=($!)
sleep 2
for i in 1 2 3; do
  # Every site gets a data directory; the label site (site 1) keeps the
  # model's top part there.
  "$COHORT_BIN" client --insecure --coordinator "$URL" --data "sites/site_$i.csv" \
    --name "site-$i" --data-dir "site-$i" >"client-$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 3

sed 's/^max_norm_defence = 1.0$//' "$ROOT/examples/wdbc-vertical.toml" >plain.toml
cp "$ROOT/examples/wdbc-vertical.toml" defended.toml
ROWS=()
for job in plain defended; do
  start=$(date +%s.%N)
  "$COHORT_BIN" job submit "$job.toml" --insecure --coordinator "$URL" --wait --json \
    2>/dev/null >"$job.json"
  end=$(date +%s.%N)
  ROWS+=("$job $(python3 -c "print(f'{$end - $start:.2f}')") $(python3 -c '
import json, re, sys
v = json.load(open(sys.argv[1]))
auc = v["rounds"][-1]["metrics"]["auc"]
leaks = [re.search(r"none\) ([0-9.]+) mean, ([0-9.]+) worst", e["message"]) for e in v["events"]]
leaks = [m.groups() for m in leaks if m]
psi = [e["message"] for e in v["events"] if e["message"].startswith("private set")][0]
secs = " ".join("%.2f" % r["duration_secs"] for r in v["rounds"] if r["round"] > 0)
print(f"{auc:.4f}", " ".join("/".join(l) for l in leaks), "| round s:", secs, "|", psi)
' "$job.json")")
done
"$COHORT_BIN" vertical --site sites/site_1.csv --site sites/site_2.csv --site sites/site_3.csv \
  --id patient_id --label diagnosis --positive M --epochs 20 >&2
echo "job wall_s(submit to completed) auc leak(mean/worst)_round1 leak_round2 | round s | psi"
printf '%s\n' "${ROWS[@]}"
