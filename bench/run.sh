#!/usr/bin/env bash
# A full benchmark run on a GPU: every case of bench/, stored with pytest-benchmark under
# bench/results/<gpu-name-slug>/, then the run's plot beside it. Extra arguments go to
# pytest (e.g. --backend triton --backend sdpa, -k gqa-8b, --bench-dtype bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
slug=$(python3 -c 'from attn.perf import gpu_slug; print(gpu_slug())')
python3 -m pytest bench/ -p no:cacheprovider --benchmark-storage="file://bench/results/$slug" \
    --benchmark-autosave --benchmark-columns=min,median,max,rounds "$@"
python3 bench/plot.py --results "bench/results/$slug"
