#!/usr/bin/env bash
# On a GPU machine: configure a Release CUDA build, run the whole suite (unit, mpi, gpu), the
# op self-check and the op benchmark, then print a summary table. Logs go to $OUT when set
# (else ./device-logs). NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
#
#   launch/device_check.sh [--no-bench]
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/device-logs}
build_dir=${SY_BUILD_DIR:-$root/build-device}
run_bench=1
[ "${1:-}" = "--no-bench" ] && run_bench=0
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

{
  echo "== machine"
  nvidia-smi --query-gpu=index,name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>&1
  nvcc --version | tail -1
  cmake --version | head -1
} 2>&1 | tee "$out/machine.log"

status_build=ok
{
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON -DSY_WERROR=ON &&
    cmake --build "$build_dir" --parallel "$(nproc)"
} >"$out/build.log" 2>&1 || status_build=FAILED
tail -3 "$out/build.log"

declare -A summary
for label in unit mpi gpu; do
  if [ "$status_build" != ok ]; then summary[$label]="not run (build failed)"; continue; fi
  ctest --test-dir "$build_dir" -L "^${label}\$" --output-on-failure --timeout 900 >"$out/ctest-$label.log" 2>&1
  line=$(grep -E "tests passed|No tests were found" "$out/ctest-$label.log" | tail -1)
  skipped=$(grep -c "(Skipped)" "$out/ctest-$label.log")
  summary[$label]="${line:-no result} (skipped: $skipped)"
done

selfcheck="not run"
if [ "$status_build" = ok ]; then
  "$build_dir/switchyard" selfcheck >"$out/selfcheck.log" 2>&1
  selfcheck=$(tail -1 "$out/selfcheck.log")
  if [ $run_bench = 1 ]; then
    "$build_dir/switchyard" bench ops >"$out/bench-ops.log" 2>&1
    gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
    # One MoE layer at the Switch benchmark shape, experts spread over every GPU.
    mpirun --allow-run-as-root --bind-to none -np "$gpus" -x NCCL_NVLS_ENABLE \
      "$build_dir/switchyard" bench moe >"$out/bench-moe.log" 2>&1
    if [ "$gpus" -ge 2 ]; then
      mpirun --allow-run-as-root --bind-to none -np "$gpus" -x NCCL_NVLS_ENABLE \
        "$build_dir/switchyard" bench comm >"$out/bench-comm.log" 2>&1
    fi
  fi
fi

echo
[ -f "$out/selfcheck.log" ] && cat "$out/selfcheck.log"
[ -f "$out/bench-ops.log" ] && { echo; cat "$out/bench-ops.log"; }
[ -f "$out/bench-moe.log" ] && { echo; cat "$out/bench-moe.log"; }
[ -f "$out/bench-comm.log" ] && { echo; cat "$out/bench-comm.log"; }
for label in unit mpi gpu; do
  grep -E "^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)" "$out/ctest-$label.log" 2>/dev/null
done
echo
echo "== device_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf "%-10s %s\n" "build" "$status_build"
for label in unit mpi gpu; do printf "%-10s %s\n" "$label" "${summary[$label]}"; done
printf "%-10s %s\n" "selfcheck" "$selfcheck"
echo "logs: $out"
