#!/usr/bin/env bash
# tk build variants side by side, in one GPU call. Each variant is a string of extra nvcc flags
# (ATTN_TK_NVCC_FLAGS; "default" = none), csrc=DIR and / or NAME=VALUE, with its own cache entry; all
# build at once. Then:
# the tk tests (tests/test_tk_*.py) on the first variant (its flags and environment), the tk benchmark (bf16, both ops, every workload) of
# each variant saved as run NAME-v<i>, the gate of each against the first, and Nsight Compute
# stall samples per SASS instruction (bench/ncu_stalls.py) of the first variant on NCU_CASES.
#   NCU_CASES="gqa-8b-long:shared_prefix" bash bench/tk_variants.sh NAME default "-DATTN_TK_QBUFS=2"
# SKIP_TESTS=1 skips the tests; NCU_CASES="" skips Nsight Compute; BASE=i gates every variant
# against variant i (default 0). TESTS="tests/x.py -k expr" (words without spaces) replaces the
# tests' arguments and TEST_VARIANTS="0 2" runs them on those variants (a failure on one that is
# meant to fail is a result too); SKIP_BENCH=1 times nothing. EAGER="--backend tk ..." (words
# without spaces) runs bench/eager_time.py, the host time of eager calls, on every variant.
# At most 8 files land in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 ATTN_CACHE_DIR=${ATTN_CACHE_DIR:-/tmp/attn-cache-variants}
out=${OUT:-out/variants}
mkdir -p "$out"
name=$1; shift
variants=("$@")
source bench/variant_words.sh  # variant_flags, variant_csrc, variant_envs, run_variant, build_variants
slug=$(python3 -c 'from attn.perf import gpu_slug; print(gpu_slug())')
store=bench/results/$slug
log=$out/variants.log
# The device's copy of the tree may carry a stale git HEAD: name the kernel sources by content.
echo "# tk sources $(cat attn/tk_ext/csrc/* | sha1sum | cut -c1-12), variants: ${variants[*]}" | tee "$log"
build_variants "$out" "$log" "${variants[@]}"
export ATTN_TK_NVCC_FLAGS="$(variant_flags "${variants[0]}")" ATTN_TK_CSRC="$(variant_csrc "${variants[0]}")"
test_rc=0
read -ra test_args <<< "${TESTS:-tests/test_tk_*.py}"
if [ -z "${SKIP_TESTS:-}" ]; then
  for i in ${TEST_VARIANTS:-0}; do
    echo "## tests v$i: ${variants[$i]}: ${test_args[*]}" | tee -a "$log"
    # Through run_variant: a variant's NAME=VALUE words (plan switches) apply to its tests too.
    # shellcheck disable=SC2068
    run_variant "${variants[$i]}" timeout -k 20 -s INT "${TEST_TIMEOUT:-200}" \
      python3 -m pytest ${test_args[@]} -q -p no:cacheprovider -x 2>&1 | tail -15 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    [ "$i" = 0 ] && test_rc=$rc
  done
fi
for i in "${!variants[@]}"; do
  [ -n "${SKIP_BENCH:-}" ] && break
  if [ "$i" = 0 ] && { [ "$test_rc" = 124 ] || [ "$test_rc" = 137 ]; }; then
    # Its tests ran past TEST_TIMEOUT: a hang would take the benchmark's timeout too.
    echo "## bench v0 skipped: its tests timed out (rc $test_rc; a hang?)" | tee -a "$log"
    continue
  fi
  echo "## bench v$i: ${variants[$i]}" | tee -a "$log"
  run_variant "${variants[$i]}" timeout -k 20 -s INT "${BENCH_TIMEOUT:-150}" \
    python3 -m pytest bench/ -p no:cacheprovider -q --backend tk --bench-dtype bf16 \
      --benchmark-storage="file://$store" --benchmark-save="$name-v$i" \
      --benchmark-columns=median,rounds --benchmark-sort=name 2>&1 | tail -30 | tee -a "$log"
  cp "$(ls -t "$store"/*/*.json | head -1)" "$out/"
done
if [ -n "${EAGER:-}" ]; then
  read -ra eager_args <<< "$EAGER"
  for i in "${!variants[@]}"; do
    echo "## eager v$i: ${variants[$i]}: ${eager_args[*]}" | tee -a "$log"
    # shellcheck disable=SC2068
    run_variant "${variants[$i]}" timeout -k 20 -s INT "${EAGER_TIMEOUT:-200}" \
      python3 bench/eager_time.py ${eager_args[@]} 2>&1 | tee -a "$log"
  done
fi
run_of() {  # the stored run number of variant $1 ("" if it was not benchmarked)
  local f
  f=$(ls -t "$store"/*/*_"$name"-v"$1".json 2>/dev/null | head -1)
  [ -n "$f" ] && basename "$f" | cut -d_ -f1
}
base=${BASE:-0}  # the variant the others are gated against
against=$(run_of "$base")
for i in "${!variants[@]}"; do
  [ "$i" = "$base" ] && continue
  r=$(run_of "$i")
  [ -n "$r" ] && [ -n "$against" ] && python3 bench/gate.py --results "$store" --run "$r" --against "$against" 2>&1 | tee -a "$log"
done
# Nsight Compute of the first variant (its flags, sources and NAME=VALUE words):
# bench/tk_ncu_source.sh without its pipe-metrics pass.
# shellcheck disable=SC2086
run_variant "${variants[0]}" env NCU_PIPES=0 OUT="$out" NCU_LOG="$log" NCU_TIMEOUT="${NCU_TIMEOUT:-150}" \
  bash bench/tk_ncu_source.sh ${NCU_CASES-gqa-8b-long:shared_prefix}
ls -la "$out"
