#!/usr/bin/env bash
# Response times of the dashboard's JSON API (issue 20) over loopback.
#
# Runs `cohort demo --dashboard 127.0.0.1:0 --rounds R` (a real mutual-TLS
# job, three hospitals), waits for its report, then times each endpoint
# with curl (`%{time_total}`, a fresh connection per request) and prints a
# Markdown table (for docs/BENCHMARKS.md) of the median and slowest of N
# requests, plus the first request of the job page alone (it runs
# `cohort verify model` on the stored model; later ones are cached).
#
# Usage: COHORT_BIN=target/debug/cohort scripts/bench_dashboard.sh [ROUNDS] [N]
#        (defaults: 20 rounds, 50 requests per endpoint)
set -euo pipefail
BIN="${COHORT_BIN:-target/debug/cohort}"
ROUNDS="${1:-20}"
N="${2:-50}"
work="$(mktemp -d)"
trap 'kill -INT "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; rm -rf "$work"' EXIT
"$BIN" demo --dashboard 127.0.0.1:0 --rounds "$ROUNDS" --workdir "$work/demo" >"$work/out" 2>/dev/null &
demo=$!
until grep -q '^Finished in' "$work/out"; do
  kill -0 "$demo" 2>/dev/null || { echo "the demo stopped" >&2; exit 1; }
  sleep 0.5
done
url="$(sed -n 's/^Dashboard: \(http[^?]*\)?token=.*/\1/p' "$work/out")"
token="$(sed -n 's/^Dashboard token (operator, 24 h): //p' "$work/out")"
get() { curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" "$url$1"; }
job="$(curl -s -H "Authorization: Bearer $token" "${url}api/jobs" | sed 's/.*"job_id":"\([^"]*\)".*/\1/')"
entries="$(curl -s -H "Authorization: Bearer $token" "${url}api/ledger" | grep -o '"index":' | wc -l)"
first="$(get "api/jobs/$job")"
echo "demo job $job: $ROUNDS rounds, $entries ledger entries; $N requests per endpoint" >&2
echo "| endpoint | median ms | slowest ms |"
echo "| --- | ---: | ---: |"
awk -v t="$first" 'BEGIN { printf "| GET /api/jobs/ID, first (verifies the model signature) | %.1f | |\n", t * 1000 }'
for path in "api/jobs" "api/jobs/$job" "api/ledger" "api/ledger/$((entries / 2))/proof" ""; do
  label="/${path/$job/ID}"
  for _ in $(seq "$N"); do get "$path"; done | sort -n | awk -v p="$label" '
    { t[NR] = $1 * 1000 }
    END { printf "| GET %s | %.1f | %.1f |\n", p, t[int((NR + 1) / 2)], t[NR] }'
done
