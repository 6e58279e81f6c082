#!/usr/bin/env bash
# Nsight Compute reports of tk's stacked kernel on the workloads that miss issue 5's targets
# (one text report per workload and op under $OUT/ncu). Needs a built extension (the cache
# in $ATTN_CACHE_DIR) or builds it on the first call.
#   bash bench/tk_ncu.sh [NAME:OP ...]   (default: gqa-8b, hydragen-mqa and no-share shared_prefix)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-out}/ncu
mkdir -p "$out"
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(gqa-8b:shared_prefix hydragen-mqa:shared_prefix no-share:shared_prefix)
for c in "${cases[@]}"; do
  name=${c%%:*}; op=${c##*:}
  timeout -k 20 -s INT "${NCU_TIMEOUT:-120}" ncu --clock-control none --kernel-name regex:stacked_attn \
      --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      python3 bench/tk_ncu.py "$name" "$op" > "$out/$name-$op.txt" 2>&1
  echo "ncu $name $op rc=$?"; grep -E "Duration|Throughput|Warp Cycles|Stall|Issued Ipc|Achieved Occupancy" "$out/$name-$op.txt" | head -20
done
