#!/usr/bin/env bash
# The per-item timeline (bench/tk_timeline.py) of several tk build variants, in one GPU call:
# every variant (words as in bench/variant_words.sh: nvcc flags, "default", csrc=DIR,
# NAME=VALUE) is built at once with -DATTN_TK_TIMELINE, then each runs the cases. The log
# (with the builds' output) lands in $OUT/timeline.log.
#   CASES="gqa-8b tree-3level" bash bench/tk_timeline_variants.sh default "-DATTN_TK_KV_PIPELINE=1" ATTN_TK_PAIR_TILES=0
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 ATTN_CACHE_DIR=${ATTN_CACHE_DIR:-/tmp/attn-cache-timeline}
out=${OUT:-out/timeline}
mkdir -p "$out"
log=$out/timeline.log
source bench/variant_words.sh  # variant_flags, variant_envs, run_variant, build_variants
export VARIANT_EXTRA_FLAGS=-DATTN_TK_TIMELINE
echo "# tk sources $(cat attn/tk_ext/csrc/* | sha1sum | cut -c1-12), cases: ${CASES:-gqa-8b}" | tee -a "$log"
build_variants "$out" "$log" "$@"
for v in "$@"; do
  echo "### variant: $v" | tee -a "$log"
  run_variant "$v" timeout -k 20 -s INT "${TL_TIMEOUT:-120}" \
    python3 bench/tk_timeline.py ${CASES:-gqa-8b} --show "${SHOW:-0}" 2>&1 | tee -a "$log"
done
