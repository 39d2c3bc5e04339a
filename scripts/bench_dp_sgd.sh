#!/usr/bin/env bash
# Cohort's DP-SGD and Opacus's, side by side: training throughput on the CPU.
#
# For every model (hidden widths H, default 64,64 and 256,256) this runs
#   Cohort:  cargo run --profile P -q -- bench dp-sgd FLAGS --json
#            (P = $COHORT_BENCH_PROFILE, default dev; $COHORT_BIN instead
#            runs a cohort binary built earlier, without cargo)
#   Opacus:  python scripts/bench_dp_sgd_opacus.py FLAGS --grad-sample-mode M --json
#            once per Opacus mode M: hooks (Opacus's default), ew (expanded
#            weights) and ghost (ghost clipping: per-sample gradient norms
#            without materializing per-sample gradients, a second backward
#            pass; by far the fastest of the three on the larger MLP)
# with the same FLAGS on both sides:
#   --features 30 --hidden H --batch 256 --rows 60000 --steps 300 --warmup 20
#   --max-grad-norm 1.0 --noise-multiplier 1.0 --learning-rate 0.05 --seed 7
# one after the other, so all see the same machine, keeps every JSON line in
# the raw file and prints a Markdown table (for docs/BENCHMARKS.md) to stdout:
# samples per second of each side, and Cohort / the fastest Opacus mode.
# Progress goes to stderr.
#
# Opacus runs from a virtual environment outside the repository
# ($COHORT_OPACUS_VENV, default ~/.cache/cohort/opacus-venv), created and
# given the pinned torch and opacus here if it is missing (see below: a CPU
# torch from PyPI without the CUDA packages).
#
# Usage:
#   scripts/bench_dp_sgd.sh [--hidden LIST] [--modes LIST] [--steps N]
#                           [--threads N] [--raw FILE] [--only cohort|opacus]
#                           [--timeout SECS]
#
#   --hidden LIST  the models, ';'-separated hidden widths (default "64,64;256,256");
#                  may be given more than once
#   --modes LIST   Opacus grad-sample modes, comma separated (default
#                  hooks,ew,ghost; also functorch)
#   --steps N      timed steps on both sides (default 300)
#   --threads N    torch.set_num_threads for Opacus (default: torch's choice,
#                  one per core); Cohort picks its own and reports it
#   --raw FILE     where the raw JSON lines go (default target/bench-dp-sgd.jsonl)
#   --only SIDE    run one side only (the table shows the other as missing)
#   --timeout S    wall-clock limit per model and side (default 900); a run
#                  past it is recorded as skipped
set -euo pipefail

# torch on PyPI for Linux x86_64 is built with CUDA: it pulls the nvidia-*
# CUDA packages and triton (several GB; there is no CPU wheel on PyPI, and
# download.pytorch.org, where the +cpu wheels live, is out of reach). So
# torch is installed --no-deps, with its pure-Python dependencies, the three
# small CUDA packages it needs to load that are real (cudart, which reports
# "no GPU"; CUPTI, which the profiler links; cuFile), and, for the big CUDA
# libraries (cuBLAS, cuDNN, cuFFT, cuRAND, cuSPARSE, cuSPARSELt, NCCL,
# NVSHMEM), small stand-ins built here that only satisfy the dynamic loader:
# every function aborts with a message if ever called, which on a machine
# without a GPU none is. That is about 1.6 GB instead of about 5 GB.
# torch 2.11.0 was the newest release when opacus 1.6.0 came out, and its
# wheel is 0.4 GB smaller than 2.10's. The rest are the versions pip resolves
# for torch 2.11.0 and opacus 1.6.0.
TORCH_VERSION="2.11.0"
OPACUS_VERSION="1.6.0"
NUMPY_VERSION="2.4.6"
PIP_PINS=(
    "torch==$TORCH_VERSION" "opacus==$OPACUS_VERSION" "numpy==$NUMPY_VERSION"
    scipy==1.17.1 opt-einsum==3.4.0
    filelock==4.2.11 typing-extensions==4.16.0 sympy==1.14.0 mpmath==1.3.0
    networkx==3.6.1 jinja2==3.1.6 MarkupSafe==3.0.4 fsspec==2026.9.0
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 nvidia-cufile==1.15.1.6
)
VENV="${COHORT_OPACUS_VENV:-$HOME/.cache/cohort/opacus-venv}"
PROFILE="${COHORT_BENCH_PROFILE:-dev}"
# A cohort binary built earlier ($COHORT_BIN) is used as is, without cargo.
COHORT_BIN="${COHORT_BIN:-}"

CALLER_DIR="$(pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

HIDDEN_ARGS=()
MODES="hooks,ew,ghost"
STEPS=300
THREADS=""
RAW=""
ONLY=""
TIMEOUT=900
while [[ $# -gt 0 ]]; do
    case "$1" in
        --hidden) HIDDEN_ARGS+=("$2"); shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --raw) RAW="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$ONLY" in ""|cohort|opacus) ;; *) echo "--only takes cohort or opacus" >&2; exit 2 ;; esac
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "--steps takes a positive integer" >&2; exit 2; }
[[ -z "$THREADS" || "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "--threads takes a positive integer" >&2; exit 2; }

[[ ${#HIDDEN_ARGS[@]} -eq 0 ]] && HIDDEN_ARGS=("64,64;256,256")
MODELS=()
for arg in "${HIDDEN_ARGS[@]}"; do
    IFS=';' read -r -a parts <<< "$arg"
    for h in "${parts[@]}"; do
        h="${h// /}"
        [[ -z "$h" ]] && continue
        [[ "$h" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || { echo "bad hidden widths: $h" >&2; exit 2; }
        MODELS+=("$h")
    done
done
IFS=',' read -r -a OPACUS_MODES <<< "$MODES"
for m in "${OPACUS_MODES[@]}"; do
    case "$m" in hooks|ew|functorch|ghost) ;; *) echo "unknown Opacus mode: $m" >&2; exit 2 ;; esac
done

if [[ -z "$RAW" ]]; then
    RAW="$ROOT/target/bench-dp-sgd.jsonl"
elif [[ "$RAW" != /* ]]; then
    RAW="$CALLER_DIR/$RAW"
fi
mkdir -p "$(dirname "$RAW")"
: > "$RAW"

cd "$ROOT"

# --- Opacus's side: a venv with the pinned torch and opacus ---------------
# make_cuda_stubs SITE_PACKAGES: build the loader stand-ins for the CUDA
# libraries that `import torch` needs and that are not installed.
make_cuda_stubs() {
    local tool
    for tool in cc readelf ldd; do
        command -v "$tool" > /dev/null || { echo "$tool is needed to set up $VENV" >&2; return 1; }
    done
    python3 - "$1" <<'PY'
import glob, os, re, subprocess, sys, tempfile

sp = sys.argv[1]
lib_dir = os.path.join(sp, "torch", "lib")
# Never the driver: cudart must find no libcuda and report no GPU.
NEVER = {"libcuda.so.1"}


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run("readelf", "-d", path))


def dynsyms(path):
    for line in run("readelf", "--dyn-syms", "--wide", path).splitlines():
        p = line.split()
        if len(p) >= 8 and p[0].endswith(":"):
            yield p


# The torch libraries that `import torch` loads: _C and what it needs.
todo = glob.glob(os.path.join(sp, "torch", "_C*.so")) + [os.path.join(lib_dir, "libtorch_global_deps.so")]
elfs = []
while todo:
    f = todo.pop()
    if f in elfs or not os.path.exists(f):
        continue
    elfs.append(f)
    todo += [os.path.join(lib_dir, n) for n in needed(f) if os.path.exists(os.path.join(lib_dir, n))]
missing, found = set(), set()
for f in elfs:
    for line in run("ldd", f).splitlines():
        m = re.match(r"\s*(\S+) => not found", line)
        if m:
            missing.add(m.group(1))
        m = re.match(r"\s*\S+ => (/\S+)", line)
        if m:
            found.add(os.path.realpath(m.group(1)))
missing -= NEVER
defined = set()
for f in set(map(os.path.realpath, elfs)) | found:
    defined |= {p[7].split("@")[0] for p in dynsyms(f) if p[6] != "UND"}
# library -> version -> symbol -> FUNC or OBJECT
stubs = {lib: {} for lib in missing}
unversioned = {}
for f in elfs:
    version_file, cur = {}, None
    for line in run("readelf", "-V", "--wide", f).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and cur:
            version_file[m.group(1)] = cur
    for p in dynsyms(f):
        if p[6] != "UND" or p[4] == "WEAK":
            continue
        name, _, ver = p[7].partition("@")
        ver = ver.lstrip("@")
        kind = "OBJECT" if p[3] == "OBJECT" else "FUNC"
        if ver:
            if version_file.get(ver) in missing:
                stubs[version_file[ver]].setdefault(ver, {})[name] = kind
        elif name not in defined and not re.match(r"_?Py", name):
            # no version says whose it is (NCCL, cuSPARSELt): every stand-in has it
            unversioned[name] = kind
for lib in sorted(missing):
    body = [
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "static void die(const char *s) {",
        f'    fprintf(stderr, "{lib}: %s called, but this library is a CPU-only '
        'stand-in (scripts/bench_dp_sgd.sh)\\n", s);',
        "    abort();",
        "}",
    ]
    groups = {v: dict(s) for v, s in stubs[lib].items()} or {"": {}}
    groups[sorted(groups)[0]].update(unversioned)
    script, i = [], 0
    for ver, syms in sorted(groups.items()):
        names = []
        for name, kind in sorted(syms.items()):
            i += 1
            if kind == "OBJECT":
                body.append(f'__attribute__((aligned(64))) char s{i}[256] __asm__("{name}");')
            else:
                body.append(f'void s{i}(void) __asm__("{name}");')
                body.append(f'void s{i}(void) {{ die("{name}"); }}')
            names.append(name + ";")
        if names:
            script.append(f"{ver} {{ global: {' '.join(names)} }};" if ver
                          else "{ global: " + " ".join(names) + " };")
    with tempfile.TemporaryDirectory() as d:
        c, vs = os.path.join(d, "stub.c"), os.path.join(d, "stub.map")
        with open(c, "w") as fh:
            fh.write("\n".join(body) + "\n")
        with open(vs, "w") as fh:
            fh.write("\n".join(script or ["{ local: *; };"]) + "\n")
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", os.path.join(lib_dir, lib), c,
                        "-Wl,-soname," + lib, "-Wl,--version-script=" + vs], check=True)
    print(f"  stand-in {lib}: {i} symbols", file=sys.stderr)
PY
}

opacus_ok() {
    "$VENV/bin/python" - "$TORCH_VERSION" "$OPACUS_VERSION" "$NUMPY_VERSION" > /dev/null 2>&1 <<'PY'
import sys
import numpy, opacus, torch
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert opacus.__version__ == sys.argv[2], opacus.__version__
assert numpy.__version__ == sys.argv[3], numpy.__version__
torch.nn.Linear(2, 1)(torch.zeros(1, 2)).sum().backward()
PY
}

if [[ "$ONLY" != "cohort" ]]; then
    if ! opacus_ok; then
        if [[ ! -x "$VENV/bin/python" ]]; then
            echo "creating $VENV" >&2
            python3 -m venv "$VENV"
        fi
        echo "installing torch==$TORCH_VERSION (CPU use, no CUDA packages), opacus==$OPACUS_VERSION into $VENV" >&2
        "$VENV/bin/python" -m pip install -q --no-cache-dir --no-deps "${PIP_PINS[@]}" >&2
        site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        make_cuda_stubs "$site"
        if ! opacus_ok; then
            echo "the Opacus environment in $VENV does not work:" >&2
            "$VENV/bin/python" -c 'import torch, opacus' >&2 || true
            exit 1
        fi
    fi
fi

# --- Cohort's side: build once, so no build time lands in a measurement ---
if [[ "$ONLY" != "opacus" && -z "$COHORT_BIN" ]]; then
    echo "building cohort (profile $PROFILE)" >&2
    cargo build --profile "$PROFILE" -q
fi
if [[ -n "$COHORT_BIN" ]]; then
    COHORT_CMD=("$COHORT_BIN")
else
    COHORT_CMD=(cargo run --profile "$PROFILE" -q --)
fi

FAILED=0
# run_side NAME MODE HIDDEN CMD...: run one side of one model; append its
# JSON line to the raw file, or a skipped/failed marker line.
run_side() {
    local name="$1" mode="$2" hidden="$3"
    shift 3
    local out start rc=0
    start=$(date +%s)
    out="$(timeout "$TIMEOUT" "$@")" || rc=$?
    local took=$(( $(date +%s) - start ))
    local line
    line="$(printf '%s\n' "$out" | grep '^{' | tail -n 1 || true)"
    local label="$name"
    [[ -n "$mode" ]] && label="$name ($mode)"
    if [[ $rc -eq 0 && -n "$line" ]]; then
        printf '%s\n' "$line" >> "$RAW"
        echo "  $label done in ${took}s" >&2
    else
        local why="failed (exit $rc)"
        [[ $rc -eq 124 ]] && why="skipped: ran past ${TIMEOUT}s"
        echo "  $label $why after ${took}s" >&2
        printf '{"framework": "%s", "grad_sample_mode": "%s", "hidden": [%s], "not_measured": "%s"}\n' \
            "$name" "$mode" "$hidden" "$why" >> "$RAW"
        [[ $rc -ne 124 ]] && FAILED=1
    fi
    return 0
}

# Both sides run on all cores by default: another busy process skews the
# numbers badly (torch's OpenMP threads wait on each other: with 2 threads on
# 2 cores next to a compiler, Opacus ran 10x slower than with 1 thread).
load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" -v n="$(nproc)" 'BEGIN { exit !(l > 0.5 * n) }'; then
    echo "warning: load average $load on $(nproc) cores: the machine is busy, the numbers will be off" >&2
fi

THREAD_FLAGS=()
[[ -n "$THREADS" ]] && THREAD_FLAGS=(--threads "$THREADS")
total=${#MODELS[@]}
n=0
for h in "${MODELS[@]}"; do
    n=$((n + 1))
    echo "[$n/$total] hidden=$h" >&2
    FLAGS=(--features 30 --hidden "$h" --batch 256 --rows 60000 --steps "$STEPS"
           --warmup 20 --max-grad-norm 1.0 --noise-multiplier 1.0
           --learning-rate 0.05 --seed 7 --json)
    if [[ "$ONLY" != "opacus" ]]; then
        run_side cohort "" "$h" "${COHORT_CMD[@]}" bench dp-sgd "${FLAGS[@]}"
    fi
    if [[ "$ONLY" != "cohort" ]]; then
        for m in "${OPACUS_MODES[@]}"; do
            run_side opacus "$m" "$h" \
                "$VENV/bin/python" -W "ignore:Secure RNG turned off" \
                -W "ignore:Full backward hook is firing" \
                scripts/bench_dp_sgd_opacus.py "${FLAGS[@]}" "${THREAD_FLAGS[@]}" \
                --grad-sample-mode "$m"
        done
    fi
done

# --- The table ---------------------------------------------------------------
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
python3 - "$RAW" "$MACHINE" "$MODES" "$STEPS" <<'PY' || FAILED=1
import json
import sys

raw, machine, modes, steps = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
rows = {}
order = []
notes = set()
for text in open(raw, encoding="utf-8"):
    text = text.strip()
    if not text.startswith("{"):
        continue
    rec = json.loads(text)
    key = tuple(int(h) for h in rec["hidden"])
    if key not in rows:
        rows[key] = {}
        order.append(key)
    side = rec["framework"]
    if side == "opacus":
        side = f"opacus {rec.get('grad_sample_mode') or 'hooks'}"
    rows[key][side] = rec
    if "not_measured" in rec:
        continue
    if rec["framework"] == "opacus":
        notes.add(f"Opacus {rec['opacus_version']} on torch {rec['torch_version']}, "
                  f"{rec['torch_threads']} thread(s)")
    else:
        notes.add(f"Cohort, {rec.get('threads', '?')} thread(s)")


def rate(rec):
    if rec is None or "not_measured" in rec or "samples_per_second" not in rec:
        return None
    return float(rec["samples_per_second"])


def cell(rec):
    if rec is None:
        return "—"
    if "not_measured" in rec:
        return rec["not_measured"]
    return f"{rate(rec):,.0f}"


print(f"Machine: {machine}. {'; '.join(sorted(notes)) or 'nothing measured'}.")
print(f"DP-SGD, samples per second over {steps} timed steps (Poisson batches, "
      "expected 256), 30 features, 60,000 rows; ratio = Cohort / the fastest Opacus mode.")
print()
head = ["model", "parameters", "Cohort"] + [f"Opacus ({m})" for m in modes] + ["ratio"]
print("| " + " | ".join(head) + " |")
print("| :--- | " + " | ".join(["---:"] * (len(head) - 1)) + " |")
for key in order:
    recs = rows[key]
    shape = "-".join(str(n) for n in (30, *key, 1))
    params = {r["parameters"] for r in recs.values() if "parameters" in r}
    if len(params) > 1:
        print(f"warning: {shape}: the sides count different parameters: {sorted(params)}",
              file=sys.stderr)
    cohort = recs.get("cohort")
    opacus = [recs.get(f"opacus {m}") for m in modes]
    best = max((r for r in map(rate, opacus) if r is not None), default=None)
    c = rate(cohort)
    ratio = "—" if c is None or not best else f"{c / best:.2f}×"
    p = f"{min(params):,}" if params else "—"
    print(f"| MLP {shape} | {p} | {cell(cohort)} | "
          + " | ".join(cell(r) for r in opacus) + f" | {ratio} |")
PY

echo "raw results: $RAW" >&2
exit "$FAILED"
