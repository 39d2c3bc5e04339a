#!/usr/bin/env bash
# Cohort's SecAgg+ and Flower's SecAgg+, side by side, on one grid.
#
# For every configuration (clients x entries x dropout) this runs
#   Cohort:  cargo run --profile P -q -- bench secagg --clients C --entries E --dropout D --json
#            (P = $COHORT_BENCH_PROFILE, default dev: the dev profile compiles
#            cohort-privacy, where the protocol lives, and every dependency at
#            opt-level 2, and it is already built by `cargo test`; a release
#            build would cost a full optimized rebuild)
#   Flower:  python3 scripts/bench_secagg_flower.py --clients C --entries E --dropout D
# one after the other, so both see the same machine, keeps every JSON line in
# the raw file and prints a Markdown table (for docs/BENCHMARKS.md) to stdout.
# Progress goes to stderr.
#
# Flower runs from a virtual environment outside the repository
# ($COHORT_FLOWER_VENV, default ~/.cache/cohort/flower-venv), created and
# given the pinned flwr here if it is missing.
#
# Usage:
#   scripts/bench_secagg.sh [--quick] [--raw FILE] [--repeat N]
#                           [--only cohort|flower] [--timeout SECS]
#
#   --quick        only 10^4 and 10^5 entries x 10 and 50 clients (both dropouts)
#   --raw FILE     where the raw JSON lines go (default target/bench-secagg.jsonl)
#   --repeat N     passed to the Flower script (runs averaged), default 1
#   --only SIDE    run one side only (the table shows the other as missing)
#   --timeout S    wall-clock limit per configuration and side (default 900);
#                  a configuration that runs past it is recorded as skipped
set -euo pipefail

# flwr 1.42.0 is the newest release, but it requires certifi>=2026.10.19,
# which the package index does not have, so it cannot be installed. 1.41.0 is
# the newest release that installs; its SecAgg+ code (flwr/common,
# secaggplus_mod.py, secaggplus_workflow.py) is byte-identical to 1.42.0's.
FLWR_VERSION="1.41.0"
VENV="${COHORT_FLOWER_VENV:-$HOME/.cache/cohort/flower-venv}"
PROFILE="${COHORT_BENCH_PROFILE:-dev}"
# A cohort binary built earlier ($COHORT_BIN) is used as is, without cargo.
COHORT_BIN="${COHORT_BIN:-}"

CALLER_DIR="$(pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

QUICK=0
RAW=""
REPEAT=1
ONLY=""
TIMEOUT=900
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --raw) RAW="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in ""|cohort|flower) ;; *) echo "--only takes cohort or flower" >&2; exit 2 ;; esac

if [[ -z "$RAW" ]]; then
    RAW="$ROOT/target/bench-secagg.jsonl"
elif [[ "$RAW" != /* ]]; then
    RAW="$CALLER_DIR/$RAW"
fi
mkdir -p "$(dirname "$RAW")"
: > "$RAW"

if [[ $QUICK -eq 1 ]]; then
    CLIENTS=(10 50)
    ENTRIES=(10000 100000)
else
    CLIENTS=(10 50 100)
    ENTRIES=(10000 100000 1000000)
fi
DROPOUTS=(0 0.1)

cd "$ROOT"

# --- Flower's side: a venv with the pinned flwr ---------------------------
if [[ "$ONLY" != "cohort" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "creating $VENV" >&2
        python3 -m venv "$VENV"
    fi
    have="$("$VENV/bin/python" -c 'import flwr; print(flwr.__version__)' 2>/dev/null || true)"
    if [[ "$have" != "$FLWR_VERSION" ]]; then
        echo "installing flwr==$FLWR_VERSION into $VENV" >&2
        "$VENV/bin/python" -m pip install -q "flwr==$FLWR_VERSION" >&2
    fi
fi

# --- Cohort's side: build once, so no build time lands in a measurement ---
if [[ "$ONLY" != "flower" && -z "$COHORT_BIN" ]]; then
    echo "building cohort (profile $PROFILE)" >&2
    cargo build --profile "$PROFILE" -q
fi
if [[ -n "$COHORT_BIN" ]]; then
    COHORT_CMD=("$COHORT_BIN")
else
    COHORT_CMD=(cargo run --profile "$PROFILE" -q --)
fi

FAILED=0
# run_side NAME CMD...: run one side of one configuration; append its JSON
# line to the raw file, or a skipped/failed marker line.
run_side() {
    local name="$1" clients="$2" entries="$3" dropout="$4"
    shift 4
    local out start rc=0
    start=$(date +%s)
    out="$(timeout "$TIMEOUT" "$@")" || rc=$?
    local took=$(( $(date +%s) - start ))
    local line
    line="$(printf '%s\n' "$out" | grep '^{' | tail -n 1 || true)"
    if [[ $rc -eq 0 && -n "$line" ]]; then
        printf '%s\n' "$line" >> "$RAW"
        echo "  $name done in ${took}s" >&2
    else
        local why="failed (exit $rc)"
        [[ $rc -eq 124 ]] && why="skipped: ran past ${TIMEOUT}s"
        echo "  $name $why after ${took}s" >&2
        printf '{"implementation": "%s", "clients": %s, "entries": %s, "dropout": %s, "not_measured": "%s"}\n' \
            "$name" "$clients" "$entries" "$dropout" "$why" >> "$RAW"
        [[ $rc -ne 124 ]] && FAILED=1
    fi
    return 0
}

total=$(( ${#CLIENTS[@]} * ${#ENTRIES[@]} * ${#DROPOUTS[@]} ))
n=0
for c in "${CLIENTS[@]}"; do
    for e in "${ENTRIES[@]}"; do
        for d in "${DROPOUTS[@]}"; do
            n=$((n + 1))
            echo "[$n/$total] clients=$c entries=$e dropout=$d" >&2
            if [[ "$ONLY" != "flower" ]]; then
                run_side cohort "$c" "$e" "$d" \
                    "${COHORT_CMD[@]}" bench secagg \
                    --clients "$c" --entries "$e" --dropout "$d" --json
            fi
            if [[ "$ONLY" != "cohort" ]]; then
                run_side flower "$c" "$e" "$d" \
                    "$VENV/bin/python" scripts/bench_secagg_flower.py \
                    --clients "$c" --entries "$e" --dropout "$d" --repeat "$REPEAT"
            fi
        done
    done
done

# --- The table ---------------------------------------------------------------
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$RAW" "$MACHINE" <<'PY' || FAILED=1
import json
import sys

raw, machine = sys.argv[1], sys.argv[2]
rows = {}
versions = set()
wrong = []
for text in open(raw, encoding="utf-8"):
    text = text.strip()
    if not text.startswith("{"):
        continue
    rec = json.loads(text)
    side = rec["implementation"].split()[0]
    if "not_measured" not in rec:
        versions.add(rec["implementation"])
    key = (int(rec["clients"]), int(rec["entries"]), float(rec["dropout"]))
    rows.setdefault(key, {})[side] = rec


def val(rec, field):
    if rec is None or "not_measured" in rec or field not in rec:
        return None
    return float(rec[field])


def secs(x):
    return "—" if x is None else f"{x:.3f}"


def size(x):
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f} MB"
    if x >= 1e3:
        return f"{x / 1e3:.1f} kB"
    return f"{x:.0f} B"


def ratio(flower, cohort):
    if flower is None or cohort is None or cohort == 0:
        return "—"
    return f"{flower / cohort:.2f}×"


def ok(rec):
    if rec is None:
        return "—"
    if "not_measured" in rec:
        return rec["not_measured"]
    if not rec.get("sum_ok"):
        wrong.append(rec["implementation"])
        return "NO"
    return "yes"


print(f"Machine: {machine}. Implementations: {', '.join(sorted(versions)) or 'none'}.")
print("Ratio = Flower / Cohort (above 1: Flower costs more). CPU in seconds;")
print("client CPU is the mean over the clients that finished the round.")
print()
print("| clients | entries | dropout "
      "| client CPU Cohort | client CPU Flower | ratio "
      "| server CPU Cohort | server CPU Flower | ratio "
      "| sent/client Cohort | sent/client Flower | ratio "
      "| sum ok (Cohort / Flower) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
      "| ---: | ---: | ---: | :---: |")
for key in sorted(rows):
    clients, entries, dropout = key
    c, f = rows[key].get("cohort"), rows[key].get("flower")
    cc, fc = val(c, "client_cpu_secs_mean"), val(f, "client_cpu_secs_mean")
    cs, fs = val(c, "server_cpu_secs"), val(f, "server_cpu_secs")
    cb, fb = val(c, "bytes_sent_per_client"), val(f, "bytes_sent_per_client")
    print(f"| {clients} | {entries:,} | {dropout:.0%} "
          f"| {secs(cc)} | {secs(fc)} | {ratio(fc, cc)} "
          f"| {secs(cs)} | {secs(fs)} | {ratio(fs, cs)} "
          f"| {size(cb)} | {size(fb)} | {ratio(fb, cb)} "
          f"| {ok(c)} / {ok(f)} |")
if wrong:
    print(f"aggregate check failed: {', '.join(wrong)}", file=sys.stderr)
    sys.exit(1)
PY

echo "raw results: $RAW" >&2
exit "$FAILED"
