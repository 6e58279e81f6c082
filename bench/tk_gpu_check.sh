#!/usr/bin/env bash
# One device call for the tk backend: build from a clean cache, run its tests, and time every
# SPEC workload (both ops) against triton and SDPA on materialised KV. Logs land in $OUT.
#   bash bench/tk_gpu_check.sh [tests|bench|all]   (default all)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
out=${OUT:-out/tk}
mkdir -p "$out"
what=${1:-all}
nvidia-smi > "$out/nvidia-smi.log" 2>&1
export ATTN_CACHE_DIR=${ATTN_CACHE_DIR:-/tmp/attn-cache}
start=$(date +%s)
python3 -m attn build --verbose > "$out/build.log" 2>&1; echo "build rc=$? in $(( $(date +%s) - start ))s" | tee -a "$out/summary.log"
grep -E "registers|spill" "$out/build.log" | sort | uniq -c >> "$out/summary.log"
python3 -m attn info > "$out/info.log" 2>&1
if [ "$what" != bench ]; then
  timeout -k 20 -s INT "${TEST_TIMEOUT:-240}" python3 -m pytest tests/test_tk_*.py -q -x -p no:cacheprovider -rs 2>&1 | tail -40 > "$out/test_tk.log"
  tail -3 "$out/test_tk.log" | tee -a "$out/summary.log"
  timeout -k 20 -s INT "${AGREE_TIMEOUT:-150}" python3 -m pytest tests/test_agreement.py --backend tk -q -p no:cacheprovider 2>&1 | tail -15 > "$out/test_agreement.log"
  tail -2 "$out/test_agreement.log" | tee -a "$out/summary.log"
fi
if [ "$what" != tests ]; then
  timeout -k 20 -s INT "${BENCH_TIMEOUT:-240}" python3 - "$out" <<'PY' 2>&1 | tee "$out/bench.log"
import json, sys, math, torch
import attn
from attn.workloads import SPEC_WORKLOADS, make_inputs, to_chunk_form, ideal_bytes, flops
from attn.timing import ceilings
from triton.testing import do_bench, do_bench_cudagraph

out = sys.argv[1]
c = ceilings()
print("times: median us, CUDA-graph replay (eager = do_bench around the Python call); sdpa eager")
print(f"GPU {torch.cuda.get_device_name()}  copy {c.bandwidth/1e12:.2f} TB/s  bf16 matmul {c.matmul/1e12:.0f} TFLOP/s")
rows = []
def t_us(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3

def g_us(fn):
    # CUDA-graph replay: GPU time without the Python launch path (the ops are graph-safe).
    fn(); torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3

def both(fn):
    return t_us(fn), g_us(fn)

def sdpa(inp):
    q = inp.q
    b, hq, d = q.shape
    ks, vs = [], []
    for lk, lv in zip(inp.prefix_k, inp.prefix_v):
        ks.append(lk.repeat_interleave(b // lk.shape[0], 0)); vs.append(lv.repeat_interleave(b // lv.shape[0], 0))
    if inp.suffix_k is not None:
        ks.append(inp.suffix_k); vs.append(inp.suffix_v)
    k = torch.cat(ks, 1).transpose(1, 2).contiguous(); v = torch.cat(vs, 1).transpose(1, 2).contiguous()
    mask = None
    if inp.suffix_lens is not None:
        t = k.shape[2]; p = t - inp.suffix_k.shape[1]
        pos = torch.arange(t, device=q.device)
        mask = (pos[None] < (p + inp.suffix_lens[:, None].long()))[:, None, None, :]
    qq = q[:, :, None, :]
    f = lambda: torch.nn.functional.scaled_dot_product_attention(qq, k, v, attn_mask=mask, enable_gqa=True)
    us = t_us(f)
    del k, v
    return us

for w0 in SPEC_WORKLOADS:
    for rag in (False, True):
        w = w0.with_(ragged=rag)
        inp = make_inputs(w, torch.bfloat16, "cuda")
        nb, nf = ideal_bytes(w, 2, inp.suffix_lens), flops(w, inp.suffix_lens)
        floor = max(nb / c.bandwidth, nf / c.matmul) * 1e6
        rec = {"workload": w.id, "floor_us": floor}
        for be in ("tk", "triton"):
            try:
                rec[f"{be}_level_eager_us"], rec[f"{be}_level_us"] = both(lambda: attn.shared_prefix_attention(*inp.args(), backend=be))
            except Exception as e:
                print(w.id, be, "level failed:", repr(e)[:300]); rec[f"{be}_level_us"] = rec[f"{be}_level_eager_us"] = math.nan
        ch = to_chunk_form(inp, 64)
        for be in ("tk", "triton"):
            try:
                rec[f"{be}_chunk_eager_us"], rec[f"{be}_chunk_us"] = both(lambda: attn.chunk_attention(*ch.args(), backend=be))
            except Exception as e:
                print(w.id, be, "chunk failed:", repr(e)[:300]); rec[f"{be}_chunk_us"] = rec[f"{be}_chunk_eager_us"] = math.nan
        del ch
        try:
            rec["sdpa_us"] = sdpa(inp)
        except Exception as e:
            print(w.id, "sdpa failed:", repr(e)[:200]); rec["sdpa_us"] = math.nan
        torch.cuda.empty_cache()
        rec["tk_level_roofline"] = floor / rec["tk_level_us"]
        rec["tk_chunk_roofline"] = floor / rec["tk_chunk_us"]
        rows.append(rec)
        print(f"{w.id:22s} floor {floor:8.1f}us | tk lvl {rec['tk_level_us']:8.1f} ({rec['tk_level_roofline']:.0%}) "
              f"chunk {rec['tk_chunk_us']:8.1f} ({rec['tk_chunk_roofline']:.0%}) | triton lvl {rec['triton_level_us']:8.1f} "
              f"chunk {rec['triton_chunk_us']:8.1f} | sdpa {rec['sdpa_us']:8.1f} | eager tk {rec['tk_level_eager_us']:.0f}/{rec['tk_chunk_eager_us']:.0f} "
              f"triton {rec['triton_level_eager_us']:.0f}/{rec['triton_chunk_eager_us']:.0f}", flush=True)
        if w.id in ("gqa-8b", "hydragen-mqa", "no-share"):
            from torch.profiler import profile, ProfilerActivity
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    attn.shared_prefix_attention(*inp.args(), backend="tk")
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6, max_name_column_width=60))
json.dump({"gpu": torch.cuda.get_device_name(), "ceilings": c.as_dict(), "rows": rows}, open(f"{out}/tk_bench.json", "w"), indent=1)
PY
fi
echo "total $(( $(date +%s) - start ))s" | tee -a "$out/summary.log"
