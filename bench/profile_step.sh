#!/usr/bin/env bash
# Per-kernel device time of one training step on one GPU, read by Nsight Compute (one metric,
# gpu__time_duration, no cache flushing, clocks left as they are), summed by kernel name.
#
#   bench/profile_step.sh [CONFIG] [--set key.path=value]...
#
# Defaults: configs/bench-switch.yaml, step 4 of 4 (after warm-up). Writes the raw CSV and the
# table to $OUT_DIR (default bench-results) and prints the table. Kernels run one at a time under
# the profiler, so the sum is pure kernel time: the step's wall time beyond it is launch gaps and
# host waits.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=${SY_BINARY:-$root/build/switchyard}
out_dir=${OUT_DIR:-$root/bench-results}
config=configs/bench-switch.yaml
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then config=$1; shift; fi
ncu=$(command -v ncu || true)
[ -n "$ncu" ] || ncu=$(ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
[ -n "$ncu" ] || { echo "profile_step.sh: Nsight Compute (ncu) not found" >&2; exit 1; }
mkdir -p "$out_dir"
export NCCL_NVLS_ENABLE=0
(cd "$root" && "$ncu" --profile-from-start off --metrics gpu__time_duration.sum --cache-control none \
  --clock-control none --csv --page raw --log-file "$out_dir/profile-step.csv" \
  "$binary" train "$config" --set train.steps=4 --set run.profile_step=4 --set log.every=1 --set log.progress=false \
  --set eval.every=0 --set checkpoint.enabled=false --set run.out_dir="$out_dir/profile-run" "$@") >"$out_dir/profile-train.log" 2>&1 ||
  { tail -20 "$out_dir/profile-train.log" >&2; exit 1; }
python3 "$root/bench/kernel_table.py" "$out_dir/profile-step.csv" | tee "$out_dir/profile-step.txt"
