# tk build variants as words, shared by bench/tk_variants.sh, bench/tk_timeline_variants.sh and
# bench/tk_coresident.sh (source it). A variant is a string of words:
#   default      nothing (the committed kernels with their defaults)
#   -D... / any  an extra nvcc flag (ATTN_TK_NVCC_FLAGS; each flag string has its own cache entry)
#   csrc=DIR     build the kernels from another copy of the sources (ATTN_TK_CSRC)
#   NAME=VALUE   (upper case) an environment variable for the variant's build, runs and tests,
#                e.g. ATTN_TK_PLAN_COSTS=1.2,0.5,1 or ATTN_TK_CSRC=DIR
# VARIANT_EXTRA_FLAGS (e.g. -DATTN_TK_TIMELINE) is added to every variant's flags.

variant_flags() {  # the nvcc flags of variant $1
  local w out=""
  for w in $1; do case $w in default|csrc=*|[A-Z]*=*) ;; *) out="$out $w";; esac; done
  out="$out ${VARIANT_EXTRA_FLAGS:-}"
  echo $out
}

variant_csrc() {  # the source tree of variant $1 ("": the package's own)
  local w
  for w in $1; do case $w in csrc=*) echo "${w#csrc=}"; return;; esac; done
  echo ""
}

variant_envs() {  # the NAME=VALUE words of variant $1, one per line
  local w
  for w in $1; do case $w in [A-Z]*=*) echo "$w";; esac; done
}

run_variant() {  # run_variant VARIANT CMD...: CMD with the variant's flags, sources and environment
  # (its NAME=VALUE words last, so that an explicit ATTN_TK_CSRC=DIR or ATTN_TK_NVCC_FLAGS=... wins)
  local v=$1; shift
  env ATTN_TK_NVCC_FLAGS="$(variant_flags "$v")" ATTN_TK_CSRC="$(variant_csrc "$v")" $(variant_envs "$v") "$@"
}

build_variants() {  # build_variants DIR LOG VARIANT...: `python3 -m attn build` of each, all at once
  local dir=$1 log=$2 i t0
  shift 2
  local vs=("$@")
  t0=$(date +%s)
  for i in "${!vs[@]}"; do
    ( run_variant "${vs[$i]}" python3 -m attn build > "$dir/build-v$i.txt" 2>&1; echo "build v$i rc=$?" >> "$dir/build-v$i.txt" ) &
  done
  wait
  echo "builds: $(( $(date +%s) - t0 )) s" | tee -a "$log"
  for i in "${!vs[@]}"; do cat "$dir/build-v$i.txt" >> "$log"; grep -h "rc=" "$dir/build-v$i.txt"; rm -f "$dir/build-v$i.txt"; done
}
