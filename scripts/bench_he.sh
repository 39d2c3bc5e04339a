#!/usr/bin/env bash
# Cohort's threshold homomorphic aggregation beside TenSEAL CKKS at NVIDIA
# FLARE's defaults (degree 8192, coefficient moduli [60, 40, 40] bits, scale
# 2^40), one after the other on the same machine:
#   Cohort:  cohort bench he --params P,... --hospitals C --json
#            ($COHORT_BIN, default: cargo run -q --)
#   TenSEAL: scripts/bench_he_tenseal.sh --params P ... --clients C --json
#            (builds its own venv; see that script)
# Both sides run on one thread. Raw JSON lines go to --raw (default
# target/bench-he.jsonl); a Markdown table for docs/BENCHMARKS.md goes to
# stdout, progress to stderr.
#
# Usage:
#   scripts/bench_he.sh [--params LIST] [--clients N] [--raw FILE]
#
#   --params LIST  comma-separated parameter counts (default 100000,1000000)
#   --clients N    hospitals / clients (default 10)
#   --raw FILE     where the raw JSON lines go
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARAMS="100000,1000000"
CLIENTS=10
RAW="$ROOT/target/bench-he.jsonl"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --params) PARAMS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --raw) RAW="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

mkdir -p "$(dirname "$RAW")"
: > "$RAW"
if [[ -n "${COHORT_BIN:-}" ]]; then
    cohort=("$COHORT_BIN")
else
    cohort=(cargo run -q --manifest-path "$ROOT/Cargo.toml" --)
fi

echo "cohort bench he ..." >&2
"${cohort[@]}" bench he --params "$PARAMS" --hospitals "$CLIENTS" --json >> "$RAW"
echo "TenSEAL ..." >&2
# shellcheck disable=SC2046
"$ROOT/scripts/bench_he_tenseal.sh" --params $(tr ',' ' ' <<< "$PARAMS") \
    --clients "$CLIENTS" --threads 1 --json >> "$RAW"

python3 - "$RAW" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cohort = {r["params"]: r for r in rows if r.get("implementation", "").startswith("cohort")}
tenseal = {r["params"]: r for r in rows if r.get("framework") == "tenseal"}
def mb(b): return f"{b / 1e6:.2f} MB"
print("| parameters | side | encrypt / client | upload / client | aggregate | decrypt | result |")
print("| ---: | :--- | ---: | ---: | ---: | ---: | :--- |")
for p in sorted(set(cohort) | set(tenseal)):
    c, t = cohort.get(p), tenseal.get(p)
    if c:
        print(f"| {p:,} | Cohort, {c['threshold']}-of-{c['hospitals']} threshold "
              f"| {c['encrypt_seconds_per_client']:.3f} s | {mb(c['upload_bytes_per_client'])} "
              f"| {c['aggregation_seconds']:.3f} s "
              f"| share {c['decryption_share_seconds']:.3f} s ({mb(c['decryption_share_bytes'])}) "
              f"+ combine {c['combine_seconds']:.3f} s "
              f"| integer sum {'exact' if c['sum_ok'] else 'WRONG'}, mean within {c['max_abs_error']:.1e} |")
    if t:
        print(f"| {p:,} | TenSEAL {t['tenseal_version']} CKKS, one shared secret key "
              f"| {t['encrypt_seconds_per_client']:.3f} s | {mb(t['upload_bytes_per_client'])} "
              f"| {t['aggregation_seconds']:.3f} s | {t['decrypt_seconds']:.3f} s "
              f"| sum within {t['max_abs_error']:.1e} |")
PY
