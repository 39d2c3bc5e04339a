#!/usr/bin/env bash
# Cohort's rounds beside Flower's Deployment Engine, on the same machine.
#
# For every configuration (clients C x parameters P) this runs, one after
# the other:
#   Flower:  one SuperLink and C SuperNodes (flwr 1.41.0, loopback, insecure:
#            no TLS) and `flwr run` of scripts/flower_rounds, a FedAvg app
#            whose ServerApp times each round from sending the fit messages
#            to aggregating the evaluations; its ClientApp only adds a step to
#            the P float32 values it receives (no training);
#   Cohort:  cohort bench rounds --clients C --params P --rounds R --json
#            (coordinator and C hospitals in one process, loopback gRPC with
#            mutual TLS, each hospital training an MLP of about P parameters
#            on its part of WDBC).
# Flower's clients do less work than Cohort's and skip TLS, so the ratio
# (Flower's median round / Cohort's) understates Cohort's lead.
#
# One JSON line per configuration goes to stdout:
#   {"clients", "parameters", "flower_round_s", "cohort_round_s",
#    "cohort_overhead_s", "ratio"}
# Progress goes to stderr.
#
# Flower runs from a virtual environment outside the repository
# ($COHORT_FLOWER_VENV, default ~/.cache/cohort/flower-venv), created and given
# the pinned flwr here if it is missing. A cohort binary built earlier
# ($COHORT_BIN) is used as is; otherwise `cargo build --release` builds one.
#
# Usage:
#   scripts/bench_flower.sh [--clients "3 10 50"] [--params "10000 1000000"]
#                           [--rounds R] [--timeout SECS]
set -euo pipefail

FLWR_VERSION="1.41.0"
VENV="${COHORT_FLOWER_VENV:-$HOME/.cache/cohort/flower-venv}"
COHORT_BIN="${COHORT_BIN:-}"
CLIENTS="3 10 50"
PARAMS="10000 1000000"
ROUNDS=3
TIMEOUT=1800

while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --params) PARAMS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "bench_flower.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
APP="$ROOT/scripts/flower_rounds"

if [ ! -x "$VENV/bin/flower-superlink" ] || ! "$VENV/bin/flwr" --version 2>/dev/null | grep -q "$FLWR_VERSION"; then
    echo "installing flwr $FLWR_VERSION into $VENV ..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "flwr==$FLWR_VERSION" numpy
fi
# The SuperLink and SuperNodes start flower-superexec, flwr-serverapp and
# flwr-clientapp by name.
export PATH="$VENV/bin:$PATH"
if [ -z "$COHORT_BIN" ]; then
    echo "building cohort (release) ..." >&2
    (cd "$ROOT" && cargo build --release --locked -q)
    COHORT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cohort"
fi

WORK="$(mktemp -d -t cohort-bench-flower-XXXXXX)"
PIDS=()
stop_flower() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_flower; rm -rf "$WORK"' EXIT

# Waits until something listens on 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "nothing listens on port $1" >&2
    return 1
}

median() { python3 -c 'import json,statistics,sys; print(statistics.median(json.loads(sys.argv[1])))' "$1"; }

for p in $PARAMS; do
    for c in $CLIENTS; do
        echo "Flower: $c SuperNodes, $p parameters, $ROUNDS rounds ..." >&2
        export FLWR_HOME="$WORK/flwr-home-$c-$p"
        mkdir -p "$FLWR_HOME"
        # Flower 1.41 serves its Fleet, Control and Runtime APIs on one HTTP port.
        cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "bench"

[superlink.bench]
address = "127.0.0.1:8000"
insecure = true
TOML
        "$VENV/bin/flower-superlink" --insecure --disable-runtime-dependency-installation \
            > "$WORK/superlink.log" 2>&1 &
        superlink=$!
        PIDS+=($superlink)
        wait_port 8000
        for i in $(seq 0 $((c - 1))); do
            "$VENV/bin/flower-supernode" --insecure --superlink 127.0.0.1:8000 \
                --port $((9100 + i)) > "$WORK/supernode-$i.log" 2>&1 &
            PIDS+=($!)
        done
        out="$WORK/flower-$c-$p.json"
        (cd "$APP" && exec timeout "$TIMEOUT" "$VENV/bin/flwr" run . bench \
            --run-config "clients=$c params=$p rounds=$ROUNDS out='$out'" --stream \
            > "$WORK/flwr-run.log" 2>&1) &
        run=$!
        # Under heavy load the SuperLink can shut itself down mid-run, and
        # `flwr run` would then wait until the timeout.
        while kill -0 "$run" 2>/dev/null; do
            if ! kill -0 "$superlink" 2>/dev/null || grep -q "Shutting down" "$WORK/superlink.log"; then
                echo "Flower's SuperLink stopped during the run (see $WORK/superlink.log)" >&2
                kill "$run" 2>/dev/null || true
                break
            fi
            sleep 2
        done
        wait "$run" 2>/dev/null || true
        stop_flower
        if [ ! -s "$out" ]; then
            echo "Flower did not finish $c x $p (see $WORK/flwr-run.log):" >&2
            tail -20 "$WORK/flwr-run.log" >&2
            trap - EXIT
            exit 1
        fi
        flower_round=$(median "$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["round_s"]))' "$out")")

        echo "Cohort: $c hospitals, $p parameters, $ROUNDS rounds ..." >&2
        cohort_json=$("$COHORT_BIN" bench rounds --clients "$c" --params "$p" --rounds "$ROUNDS" --json | tail -1)
        python3 - "$c" "$p" "$flower_round" "$cohort_json" <<'PY'
import json, sys
clients, params, flower = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
cohort = json.loads(sys.argv[4])
print(json.dumps({
    "clients": clients,
    "parameters": params,
    "flower_round_s": round(flower, 4),
    "cohort_round_s": round(cohort["round_s"], 4),
    "cohort_overhead_s": round(cohort["overhead_s"], 4),
    "cohort_parameters": cohort["parameters"],
    "ratio": round(flower / cohort["round_s"], 1),
}), flush=True)
PY
    done
done
