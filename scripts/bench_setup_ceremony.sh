#!/usr/bin/env bash
# Cost of a Groth16 setup ceremony among validators (`cohort setup`), per
# step, for each parameter count: wall seconds, peak resident memory and the
# ceremony file's size. Two validators contribute to the powers phase, one
# to the circuit phase; `verify` is what the coordinator runs when a job
# takes the file.
#
#   scripts/bench_setup_ceremony.sh BIN ENTRIES...
#   scripts/bench_setup_ceremony.sh target/release/cohort 100 1000 10000
set -euo pipefail
bin=$(realpath "$1")
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$bin" ca init --consortium bench --out ca >/dev/null
for v in validator-1 validator-2; do
  "$bin" ca issue --ca ca --role validator --name "$v" --out "$v" >/dev/null
done
step() {
  local label=$1
  shift
  /usr/bin/time -f "%e %M" -o t.txt "$bin" "$@" >/dev/null 2>err.txt || { cat err.txt; exit 1; }
  read -r secs kib < t.txt
  printf '| %s | %s | %s s | %s MiB | %s MiB |\n' "$entries" "$label" "$secs" $((kib / 1024)) \
    $(( $(stat -c %s c.ceremony) / 1048576 ))
}
echo "| parameters | step | wall | peak RSS | file |"
echo "| --- | --- | --- | --- | --- |"
for entries in "$@"; do
  rm -f c.ceremony
  step new setup new --entries "$entries" --out c.ceremony
  step "contribute (powers)" setup contribute c.ceremony --tls validator-1
  step "contribute (powers)" setup contribute c.ceremony --tls validator-2
  step seal setup seal c.ceremony
  step "contribute (circuit)" setup contribute c.ceremony --tls validator-2
  step verify setup verify c.ceremony --tls validator-1
done
