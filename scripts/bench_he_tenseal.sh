#!/usr/bin/env bash
# TenSEAL CKKS at NVIDIA FLARE's default HE settings (N=8192, q=[60,40,40],
# scale 2^40): per-client encryption, upload size, server aggregation and
# decryption, the reference for Cohort's homomorphic aggregation.
#
# This runs scripts/bench_he_tenseal.py (its docstring says what is measured
# and how) from a virtual environment outside the repository
# ($COHORT_TENSEAL_VENV, default ~/.cache/cohort/tenseal-venv), created and
# given the pinned tenseal and numpy here if it is missing. All arguments go
# to the Python script unchanged; results go to stdout (a table, or one JSON
# line per parameter count with --json), progress to stderr.
#
# Usage:
#   scripts/bench_he_tenseal.sh [--params P [P ...]] [--clients C] [--seed S]
#                               [--threads N] [--chunk] [--json]
#
#   --params P...  parameter counts, one measurement each (default 100000 1000000)
#   --clients C    clients (default 10)
#   --seed S       seed of the clients' values (default 7)
#   --threads N    TenSEAL context n_threads (default 1)
#   --chunk        encrypt 4096-value pieces even where TenSEAL would split itself
#   --json         one JSON object per parameter count instead of a table
set -euo pipefail

# tenseal 0.3.18 is the newest release with a CPython 3.11 x86_64 manylinux
# wheel (manylinux_2_27/2_28); it requires numpy without a bound, and numpy
# 2.4.6 is the version pip resolves for it.
TENSEAL_VERSION="0.3.18"
NUMPY_VERSION="2.4.6"
VENV="${COHORT_TENSEAL_VENV:-$HOME/.cache/cohort/tenseal-venv}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "${1:-}" in
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
esac

tenseal_ok() {
    "$VENV/bin/python" - "$TENSEAL_VERSION" "$NUMPY_VERSION" > /dev/null 2>&1 <<'PY'
import sys
import numpy, tenseal
assert tenseal.__version__ == sys.argv[1], tenseal.__version__
assert numpy.__version__ == sys.argv[2], numpy.__version__
ctx = tenseal.context(tenseal.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                      coeff_mod_bit_sizes=[60, 40, 40], n_threads=1)
ctx.global_scale = 2 ** 40
assert abs(tenseal.ckks_vector(ctx, [1.5]).decrypt()[0] - 1.5) < 1e-3
PY
}

if ! tenseal_ok; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "creating $VENV" >&2
        python3 -m venv "$VENV"
    fi
    echo "installing tenseal==$TENSEAL_VERSION, numpy==$NUMPY_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --no-cache-dir \
        "tenseal==$TENSEAL_VERSION" "numpy==$NUMPY_VERSION" >&2
    if ! tenseal_ok; then
        echo "the TenSEAL environment in $VENV does not work:" >&2
        "$VENV/bin/python" -c 'import tenseal' >&2 || true
        exit 1
    fi
fi

# Another busy process skews the timings.
load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > 0.5 * n) }'; then
    echo "warning: load average $load on $(nproc) cores: the machine is busy, the numbers will be off" >&2
fi

exec "$VENV/bin/python" "$ROOT/scripts/bench_he_tenseal.py" "$@"
