#!/usr/bin/env bash
# The private set intersection of a vertical job, relayed by the coordinator
# over real gRPC between real processes: a synthetic table of N patients
# (id, a 0/1 label, 6 numeric columns) split by columns into 3 site files
# (`cohort data split-vertical --keep 0.9`), one `cohort coordinator`, three
# `cohort client`s on loopback (plaintext), and a one-round, one-epoch
# vertical job (MLP 6-8-1, batches of 256) whose first event reports the
# intersection's size and the PSI's wall time (every site blinds its own ids
# and, relayed, each other site's list once).
#
# Usage: scripts/bench_vertical_psi_grpc.sh N [PORT]   (default port 7393)
# Uses $COHORT_BIN if set, else builds the dev binary with cargo.
set -euo pipefail

N="${1:?usage: $0 N [PORT]}"
PORT="${2:-7393}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${COHORT_BIN:-}" ]]; then
  cargo build -q --bin cohort --manifest-path "$ROOT/Cargo.toml"
  COHORT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cohort"
fi
WORK="$(mktemp -d -t cohort-vertical-psi-XXXX)"
URL="http://127.0.0.1:$PORT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
cd "$WORK"

python3 - "$N" >table.csv <<'PY'
import random, sys
n = int(sys.argv[1])
rng = random.Random(1)
print("patient_id,label," + ",".join(f"x{i}" for i in range(6)))
for i in range(n):
    x = [rng.gauss(0, 1) for _ in range(6)]
    y = 1 if x[0] + x[3] - x[5] + rng.gauss(0, 1) > 0 else 0
    print(f"p{i:08d},{y}," + ",".join(f"{v:.4f}" for v in x))
PY
"$COHORT_BIN" data split-vertical table.csv --sites 3 --out sites --id patient_id \
  --label label --keep 0.9 --seed 1 >&2
cat >job.toml <<'TOML'
name = "vertical-psi-bench"
[data]
id = "patient_id"
label = "label"
positive = "1"
validation_fraction = 0.2
[model]
kind = "mlp"
hidden = [8]
[training]
mode = "vertical"
rounds = 1
min_clients = 3
clients_per_round = 3
local_epochs = 1
batch_size = 256
optimizer = { kind = "sgd", learning_rate = 0.05, momentum = 0.9 }
round_timeout_secs = 600
max_round_attempts = 1
TOML
"$COHORT_BIN" coordinator --insecure --listen "127.0.0.1:$PORT" --data-dir coord \
  >coord.log 2>&1 &
PIDS+=($!)
sleep 2
for i in 1 2 3; do
  "$COHORT_BIN" client --insecure --coordinator "$URL" --data "sites/site_$i.csv" \
    --name "site-$i" >"client-$i.log" 2>&1 &
  PIDS+=($!)
done
sleep 3
start=$(date +%s.%N)
"$COHORT_BIN" job submit job.toml --insecure --coordinator "$URL" --wait --json \
  2>/dev/null >view.json
end=$(date +%s.%N)
python3 - "$N" "$start" "$end" <<'PY'
import json, sys
v = json.load(open("view.json"))
psi = [e["message"] for e in v["events"] if e["message"].startswith("private set")][0]
auc = v["rounds"][-1]["metrics"]["auc"]
print(f"N={sys.argv[1]} job {v['state']} in {float(sys.argv[3]) - float(sys.argv[2]):.1f} s, "
      f"AUC {auc:.4f}; {psi}")
PY
