#!/usr/bin/env bash
# bench/tk_coresident.py under several tk builds, in one GPU call: the default build and lean
# ones whose CTA leaves registers and shared memory for a decode CTA beside it. Each build has
# its own cache entry; all build at once. Results: $OUT/coresident.jsonl and the log.
#   bash bench/tk_coresident.sh [WORKLOAD ...]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 ATTN_CACHE_DIR=${ATTN_CACHE_DIR:-/tmp/attn-cache-coresident}
out=${OUT:-out/coresident}
mkdir -p "$out"
lean="-DATTN_TK_MAXNREG=128 -DATTN_TK_PIPELINE=0 -DATTN_TK_PRODUCER_REGS=40 -DATTN_TK_CONSUMER_REGS=168 -DATTN_TK_QSLOTS=2"
variants=("" "$lean -DATTN_TK_SMEM_KB=128" "$lean -DATTN_TK_SMEM_KB=96")
log=$out/coresident.log
source bench/variant_words.sh  # run_variant, build_variants (each variant here is a string of nvcc flags)
echo "# tk sources $(cat attn/tk_ext/csrc/* | sha1sum | cut -c1-12)" | tee "$log"
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv | tee -a "$log"
build_variants "$out" "$log" "${variants[@]}"
for i in "${!variants[@]}"; do
  echo "## v$i: ${variants[$i]:-default}" | tee -a "$log"
  run_variant "${variants[$i]}" timeout -k 20 -s INT "${RUN_TIMEOUT:-150}" \
    python3 bench/tk_coresident.py --out "$out/coresident.jsonl" ${1+--workloads "$@"} 2>&1 | tee -a "$log"
done
