#!/usr/bin/env bash
# Do two copies of the tk kernel sources compile to the same code? Without a GPU: nvcc -ptx
# of every .cu unit of each (the project's nvcc flags plus EXTRA), then a diff of the PTX with
# comments, line info and file-hash-named symbols removed. Use it before claiming that a change
# (comments, a compile-time switch left at its old value, debug fields) leaves the kernels as
# they were measured.
#   bash bench/tk_ptx_diff.sh OLD_CSRC NEW_CSRC [EXTRA nvcc flags...]
#   e.g. mkdir -p /tmp/old && git archive HEAD~1 attn/tk_ext/csrc | tar -x -C /tmp/old
#        bash bench/tk_ptx_diff.sh /tmp/old/attn/tk_ext/csrc attn/tk_ext/csrc
# Exit status 0: identical; 1: the PTX differs (the diff's size per unit is printed).
set -uo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2; shift 2
tk=${THUNDERKITTENS_ROOT:-third_party/ThunderKittens}
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
flags=$(python3 -c 'from attn.tk_ext.build import NVCC_FLAGS; print(" ".join(f for f in NVCC_FLAGS if f not in ("-Xptxas", "-v") and not f.startswith("arch=")))' | sed 's/-gencode//')
torch_dir=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
py_inc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# CPU-only torch wheels lack this generated header; the kernels need only its one macro.
mkdir -p "$work/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$work/stub/c10/cuda/impl/cuda_cmake_macros.h"
norm() { grep -v '^\s*//\|\.loc\|\.file' "$1" | sed -E 's/_[0-9a-f]{8}_[0-9]+_[A-Za-z0-9_]+_cu_[0-9a-f]{8}/_H_/g'; }
status=0
for unit in "$new"/*.cu; do
  u=$(basename "$unit" .cu)
  for side in old new; do
    dir=${!side}
    "$nvcc" -ptx "$dir/$u.cu" -o "$work/$side-$u.ptx" $flags -arch=compute_90a "$@" \
      -I "$work/stub" -I "$tk/include" -I "$tk/prototype" -I "$dir" -I "$torch_dir/include" \
      -I "$torch_dir/include/torch/csrc/api/include" -I "$py_inc" -D_GLIBCXX_USE_CXX11_ABI=1 \
      > "$work/$side-$u.log" 2>&1 &
  done
  wait
  for side in old new; do
    [ -s "$work/$side-$u.ptx" ] || { echo "$u: $side does not compile:"; tail -5 "$work/$side-$u.log"; exit 2; }
  done
  n=$(diff <(norm "$work/old-$u.ptx") <(norm "$work/new-$u.ptx") | wc -l)
  if [ "$n" -eq 0 ]; then echo "$u: identical PTX"; else echo "$u: PTX differs ($n diff lines)"; status=1; fi
done
exit $status
