#!/usr/bin/env bash
# The per-item timeline (bench/tk_timeline.py) of several tk build variants, in one GPU call:
# every variant (a string of nvcc flags; "default" = none) is built at once with
# -DATTN_TK_TIMELINE, then each runs the cases. A NAME=VALUE word (upper case) sets an
# environment variable for the variant's build and runs instead (as in tk_variants.sh; e.g.
# ATTN_TK_CSRC=DIR builds another copy of the kernel sources). The log lands in
# $OUT/timeline.log.
#   CASES="gqa-8b tree-3level" bash bench/tk_timeline_variants.sh default "-DATTN_TK_KV_PIPELINE=1" ATTN_TK_PAIR_TILES=0
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1 ATTN_CACHE_DIR=${ATTN_CACHE_DIR:-/tmp/attn-cache-timeline}
out=${OUT:-out/timeline}
mkdir -p "$out"
log=$out/timeline.log
flags() { local w f=""; for w in $1; do case $w in default|[A-Z]*=*) ;; *) f="$f $w";; esac; done; echo "${f# } -DATTN_TK_TIMELINE" | sed 's/^ //'; }
envs() { local w; for w in $1; do case $w in [A-Z]*=*) echo "$w";; esac; done; }
echo "# tk sources $(cat attn/tk_ext/csrc/* | sha1sum | cut -c1-12), cases: ${CASES:-gqa-8b}" | tee -a "$log"
t0=$(date +%s)
for i in $(seq 0 $(($# - 1))); do
  v=("$@"); ( env $(envs "${v[$i]}") ATTN_TK_NVCC_FLAGS="$(flags "${v[$i]}")" python3 -m attn build > "$out/b$i.txt" 2>&1 || cat "$out/b$i.txt" ) &
done
wait
rm -f "$out"/b*.txt
echo "builds: $(( $(date +%s) - t0 )) s" | tee -a "$log"
for v in "$@"; do
  echo "### variant: $v" | tee -a "$log"
  env $(envs "$v") ATTN_TK_NVCC_FLAGS="$(flags "$v")" timeout -k 20 -s INT "${TL_TIMEOUT:-120}" \
    python3 bench/tk_timeline.py ${CASES:-gqa-8b} --show "${SHOW:-0}" 2>&1 | tee -a "$log"
done
