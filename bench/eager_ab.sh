#!/usr/bin/env bash
# Host time of eager calls, this tree against another copy of the package (A/B of host-side
# changes, which graph replay cannot show). Builds both tk extensions at once, then runs
# bench/eager_time.py ROUNDS times on each, alternating, pinned to one CPU core:
#   bash bench/eager_ab.sh OLD_DIR [eager_time.py args...]
# OLD_DIR holds an `attn` package (e.g. `git archive <commit> attn | tar -x -C OLD_DIR`).
# ROUNDS (default 2), CORE (default 3); logs in $OUT (default out/eager-ab).
set -uo pipefail
cd "$(dirname "$0")/.."
old=$1; shift
case "$old" in /*) ;; *) old=$PWD/$old;; esac
out=${OUT:-out/eager-ab}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 THUNDERKITTENS_ROOT=${THUNDERKITTENS_ROOT:-$PWD/third_party/ThunderKittens}
log=$out/eager-ab.log
echo "# eager A/B: new = $PWD ($(cat attn/tk_ext/csrc/* | sha1sum | cut -c1-12)), old = $old ($(cat "$old"/attn/tk_ext/csrc/* | sha1sum | cut -c1-12)); args: $*" | tee "$log"
t0=$(date +%s)
# `python -m` puts the working directory first on sys.path: each build runs from its tree.
python3 -m attn build > "$out/build-new.txt" 2>&1 &
(cd "$old" && python3 -m attn build) > "$out/build-old.txt" 2>&1
wait
echo "builds: $(( $(date +%s) - t0 )) s; $(tail -1 "$out/build-new.txt"); $(tail -1 "$out/build-old.txt")" | tee -a "$log"
for r in $(seq "${ROUNDS:-2}"); do
  for side in old new; do
    dir=.; [ "$side" = old ] && dir=$old
    echo "## round $r: $side" | tee -a "$log"
    # (a script's own folder, bench/, is first on sys.path: PYTHONPATH picks the package)
    PYTHONPATH=$dir taskset -c "${CORE:-3}" python3 bench/eager_time.py "$@" 2>&1 | tee -a "$log"
  done
done
