#!/usr/bin/env bash
# One call on the device machine: the bench suite for the sdpa baseline and the torch
# backend (every SPEC workload and its ragged variant, bf16 and fp16, both ops), the gate
# against the previous stored run, the do_bench agreement test, the plots, and
# `python -m attn compare` (every available backend). At most 8 files land in $OUT.
#   bash bench/gpu_run.sh NAME [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-out/gpu}
mkdir -p "$out/compare"
name=${1:-run}; shift || true
slug=$(python3 -c 'from attn.perf import gpu_slug; print(gpu_slug())')
store=bench/results/$slug
python3 -m attn info 2>&1 | tee "$out/bench.log"
# SIGINT, not SIGTERM: pytest then still finishes the session and pytest-benchmark saves.
timeout -k 20 -s INT "${BENCH_TIMEOUT:-300}" python3 -m pytest bench/ -p no:cacheprovider -q \
    --backend sdpa --backend torch --benchmark-storage="file://$store" --benchmark-save="$name" \
    --benchmark-columns=median,min,max,rounds --benchmark-sort=name "$@" 2>&1 | tee -a "$out/bench.log"
python3 bench/gate.py --results "$store" 2>&1 | tee -a "$out/bench.log"
timeout -k 20 -s INT 120 python3 -m pytest tests/test_perf.py -k do_bench -s -q -p no:cacheprovider 2>&1 | tee "$out/dobench.log"
new=$(ls -t "$store"/*/*.json | head -1)
cp "$new" "$out/"
python3 bench/plot.py --results "$store" --out "$out"
python3 bench/plot.py --results "$store" --out "$out" --history 'gqa-8b[torch-bf16-shared_prefix]'
timeout -k 20 -s INT "${COMPARE_TIMEOUT:-150}" python3 -m attn compare --out "$out/compare" > "$out/compare/compare.log" 2>/dev/null
tail -40 "$out/compare/compare.log"
ls -la "$out" "$out/compare"
