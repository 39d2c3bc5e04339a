#!/usr/bin/env bash
# Utility of the preprocessing statistics under differential privacy
# (issue 21): the demo's DP recipe (logistic regression, 10 rounds, batch
# 96) on the bundled WDBC data dealt to 3 virtual hospitals, at target
# epsilon 4 per hospital, with the statistics
#   - given publicly ([preprocessing] from `cohort data preprocessing`),
#   - noised to statistics_epsilon 1 (the default share), 2 and 3.
# Prints one line per run: the configuration, the job's state and its last
# round's federated validation accuracy and ROC AUC.
#
#   scripts/bench_dp_statistics.sh [RUNS] [COHORT_BINARY]
set -euo pipefail
runs="${1:-3}"
cohort="${2:-target/release/cohort}"
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/data/wdbc.csv"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sed -e 's/kind = "mlp".*/kind = "logistic"/' -e 's/^hidden.*//' \
    -e 's/rounds = 20/rounds = 10/' -e 's/local_epochs = 2/local_epochs = 1/' \
    -e 's/batch_size = 32/batch_size = 96/' \
    -e 's/learning_rate = 0.05, momentum = 0.9/learning_rate = 1.0, momentum = 0.5/' \
    "$root/examples/wdbc-mlp.toml" > "$work/base.toml"
dp='[privacy.dp]
level = "record"
target_epsilon = 4.0
delta = 1e-5'
{ cat "$work/base.toml"; echo "$dp"; "$cohort" data preprocessing "$data" --job "$work/base.toml"; } > "$work/public.toml"
for s in 1 2 3; do
  { cat "$work/base.toml"; echo "$dp"; echo "statistics_epsilon = $s"; } > "$work/noised-$s.toml"
done

for config in public noised-1 noised-2 noised-3; do
  for run in $(seq 1 "$runs"); do
    "$cohort" simulate "$work/$config.toml" --clients 3 --data "$data" --seed "$run" --json 2>/dev/null \
      | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.strip()]
summary, rounds = lines[-1], [l for l in lines[:-1] if "round" in l]
last = rounds[-1] if rounds else {}
acc, auc = last.get("accuracy"), last.get("auc")
fmt = lambda v: "-" if v is None else f"{v:.4f}"
print(sys.argv[1], sys.argv[2], summary["state"], fmt(acc), fmt(auc),
      (summary.get("error") or "")[:90], sep="\t")
' "$config" "$run" || true  # a failed job is a result too
  done
done
