#!/usr/bin/env bash
# Nsight Compute on tk's stacked kernel, per NAME:OP case: the details page (speed of light,
# warp states, scheduler), pipe utilisation metrics, and the SASS source page with its stall
# samples (bench/ncu_stalls.py prints the top instructions; the gzipped CSV lands in $OUT so
# that one role's code, e.g. the decode warpgroup's loop, can be summed apart afterwards).
# Runs under the caller's environment (ATTN_TK_NVCC_FLAGS, ATTN_TK_DECODE_WG, ...); bench/tk_variants.sh
# calls it for NCU_CASES. NCU_PIPES=0 skips the metrics pass.
#   OUT=out/ncu bash bench/tk_ncu_source.sh gqa-8b:shared_prefix
# NCU_REGION=REGEX also sums the stalls of the code it brackets (bench/ncu_stalls.py --region), e.g.
# the decode warpgroup's: NCU_REGION='HGMMA\.64x16x16|BAR\.SYNC[.A-Z_]* 0x6,'
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-out/ncu}
mkdir -p "$out"
log=${NCU_LOG:-$out/ncu.log}
pipes=sm__inst_executed_pipe_tensor_op_gmma.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active
pipes=$pipes,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
pipes=$pipes,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
pipes=$pipes,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed
pipes=$pipes,lts__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_bytes.sum.per_second,dram__bytes_read.sum.per_second
for c in "$@"; do
  n=${c%%:*}; op=${c##*:}
  rep=/tmp/ncu-$n-$op
  timeout -k 20 -s INT "${NCU_TIMEOUT:-150}" ncu --clock-control none --kernel-name regex:stacked_attn \
      --launch-skip 1 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
      --section SourceCounters -o "$rep" -f python3 bench/tk_ncu.py "$n" "$op" > /tmp/ncu-run.txt 2>&1
  echo "## ncu $n $op rc=$? (${ATTN_TK_NVCC_FLAGS:-default} ATTN_TK_DECODE_WG=${ATTN_TK_DECODE_WG:-auto})" | tee -a "$log"
  tail -3 /tmp/ncu-run.txt | tee -a "$log"
  ncu --import "$rep.ncu-rep" --page details 2>&1 \
    | grep -E "Duration|Throughput|Warp Cycles|Ipc|Issue Slots|Eligible|Active Warps|No Eligible|Stall" | tee -a "$log"
  ncu --import "$rep.ncu-rep" --page source --csv --print-source sass > "/tmp/src-$n-$op.csv" 2>&1
  python3 bench/ncu_stalls.py "/tmp/src-$n-$op.csv" --top 40 ${NCU_REGION:+--region "$NCU_REGION"} \
    > "$out/stalls-$n-$op.txt" 2>&1
  head -75 "$out/stalls-$n-$op.txt" | tee -a "$log"
  [ -n "${NCU_REGION:-}" ] && sed -n '/^region /,$p' "$out/stalls-$n-$op.txt" | head -70 | tee -a "$log"
  gzip -c "/tmp/src-$n-$op.csv" > "$out/src-$n-$op.csv.gz"
  # The pipe metrics in their own pass: a name this ncu lacks fails only this part (NCU_PIPES=0: none).
  [ "${NCU_PIPES:-1}" = 0 ] && continue
  timeout -k 20 -s INT "${NCU_TIMEOUT:-150}" ncu --clock-control none --kernel-name regex:stacked_attn \
      --launch-skip 1 --launch-count 1 --metrics "$pipes" python3 bench/tk_ncu.py "$n" "$op" 2>&1 \
    | grep -E "pct|per_second|==ERROR|Failed" | tee -a "$log"
done
