#!/usr/bin/env bash
# On a GPU machine: a Release CUDA build, the GPU tests, the multi-rank tests on the GPUs, the
# benchmarks and training runs, then a summary. Logs go to $OUT when set (else ./device-logs).
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
#
#   launch/device_check.sh [--no-bench] [--compare] [--quick]
#
# Steps run in order of importance under one time budget (SY_TIME_BUDGET seconds, default 540):
# a step that no longer fits is skipped and named in the summary, and every step's timeout is
# capped by what is left, so a runner with a wall-clock limit always gets the summary. Each step
# prints one line as it ends.
#   1. build; GPU tests; multi-rank tests with a GPU per rank (2 ranks, when there are 2 GPUs)
#   2. --compare: bench/compare.sh (switchyard against the PyTorch reference, one GPU); else a
#      20-step bench-switch run
#   3. bench-switch on the mma.sync attention kernels (model.attention_kernel=mma, the default
#      picks wgmma on Hopper); the per-kernel profile of one bench-switch step (Nsight Compute)
#   4. with 2+ GPUs: switch-base-8 on 2 GPUs; bench moe and bench comm over every GPU; the weak
#      scaling sweep (1, 2, 4, 8 up to the GPU count) with its layer benchmarks; switch-base-8
#      with the exchange pipelined in 4 chunks
#   5. op self-check, op benchmark, the default tiny job; the CPU unit suite (CI runs it too)
# --quick stops after 3; --no-bench after 1. SY_ONLY="build gpu-tests ..." runs only the named
# steps; SY_GTEST_FILTER narrows the GPU tests (a gtest filter).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${OUT:-$root/device-logs}
out=$(mktemp -d /tmp/device-check.XXXXXX)
build_dir=${SY_BUILD_DIR:-$root/build-device}
bin=$build_dir/switchyard
run_bench=1
run_compare=0
quick=0
for arg in "$@"; do
  case "$arg" in
    --no-bench) run_bench=0 ;;
    --compare) run_compare=1 ;;
    --quick) quick=1 ;;
    *) echo "device_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
budget=${SY_TIME_BUDGET:-540}
step_limit=${SY_STEP_TIMEOUT:-300}
summary=()
skipped=()
# Real text when the shards were carried in (data/fortunes) or the corpus is installed.
data_args=()
if ! compgen -G "$root/data/fortunes/train_*.bin" >/dev/null && [ ! -d /usr/share/games/fortunes ]; then
  data_args=(--set data.source=synthetic --set eval.every=0)
fi

# step NAME SECONDS COMMAND...: runs COMMAND (output to $out/NAME.log) when about SECONDS still
# fit in the budget, with a timeout of what is left; prints and records one line.
step() {
  local name=$1 need=$2
  shift 2
  if [ -n "${SY_ONLY:-}" ] && [[ " $SY_ONLY " != *" $name "* ]]; then return 1; fi
  if [ $((SECONDS + need)) -gt "$budget" ]; then
    skipped+=("$name")
    return 1
  fi
  local left=$((budget - SECONDS)) started=$SECONDS
  # Through bash -c, so COMMAND may also be one of the exported functions below.
  timeout $((left < step_limit ? left : step_limit)) bash -c '"$@"' "$name" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local line="$(printf '%-22s rc %-3s %4ds  %s' "$name" "$rc" $((SECONDS - started)) "$(result_of "$name")")"
  echo "$line"
  summary+=("$line")
  return 0
}

# The one line that sums up a step's log.
result_of() {
  local log=$out/$1.log
  case "$1" in
    gpu-tests | mpi-tests)
      local plain ran failed
      plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")  # gtest colours its output under mpirun
      ran=$(grep -E "\[==========\] [0-9]+ tests? from .* ran" <<<"$plain" | tail -1 | sed 's/.*\] //')
      failed=$(grep -cE "\[  FAILED  \] [A-Za-z]" <<<"$plain")
      echo "${ran:-no gtest summary}; passed $(grep -E "\[  PASSED  \] [0-9]+" <<<"$plain" | tail -1 |
        grep -oE "[0-9]+ tests?" | head -1), failed lines $failed, skipped $(grep -E "\[  SKIPPED \] [0-9]+" <<<"$plain" |
        tail -1 | grep -oE "[0-9]+ tests?" | head -1)" ;;
    compare) grep -E "^switchyard / torch compile" "$log" || echo "no ratio (see compare.log)" ;;
    unit-suite) grep -E "tests passed" "$log" | tail -1 ;;
    selfcheck) tail -1 "$log" ;;
    profile) tail -1 "$log" ;;
    *) grep -E "^done" "$log" | tail -1 | cut -c1-150 || true ;;
  esac
}

{
  echo "== machine"
  nvidia-smi --query-gpu=index,name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv 2>&1
  nvcc --version | tail -1
  cmake --version | head -1
} 2>&1 | tee "$out/machine.log"

build() {
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSY_CUDA=ON -DSY_WERROR=ON &&
    cmake --build "$build_dir" --parallel "$(nproc)"
}
train() {  # train RANKS CONFIG ARGS...: launch/train.sh with this build, no checkpoints
  local ranks=$1 config=$2
  shift 2
  (cd "$root" && SY_BINARY="$bin" launch/train.sh -n "$ranks" "$config" --set log.progress=false \
    --set checkpoint.enabled=false "$@")
}
on_gpus() { mpirun --allow-run-as-root --bind-to none -np "$1" -x NCCL_NVLS_ENABLE "${@:2}"; }
export root build_dir bin
export -f build train on_gpus

build_ok=0
step build 60 build && [ -x "$bin" ] && build_ok=1
if [ $build_ok = 1 ]; then
  # The GPU suite in one process (a CUDA context per test, as ctest runs it, costs a minute).
  step gpu-tests 60 "$build_dir/tests/gpu_tests" --gtest_filter="${SY_GTEST_FILTER:-*}"
  # The multi-rank suite with a GPU per rank: NCCL exchanges, the training layouts on GPUs.
  [ "$gpus" -ge 2 ] && step mpi-tests 90 on_gpus 2 "$build_dir/tests/mpi_tests"
fi
if [ $build_ok = 1 ] && [ $run_bench = 1 ]; then
  if [ $run_compare = 1 ]; then
    step compare 150 env OUT_DIR="$out/compare" SY_BINARY="$bin" "$root/bench/compare.sh"
  else
    step bench-switch 40 train 1 configs/bench-switch.yaml --set train.steps=20 --set log.every=5 \
      --set run.out_dir="$out/bench-switch"
  fi
  # The same model on the mma.sync attention kernels (the default picks wgmma on Hopper), beside it.
  step bench-switch-mma 40 train 1 configs/bench-switch.yaml --set train.steps=30 --set log.every=10 \
    --set model.attention_kernel=mma --set run.out_dir="$out/bench-switch-mma"
  step profile 90 env OUT_DIR="$out/profile" SY_BINARY="$bin" "$root/bench/profile_step.sh"
  if [ $quick = 0 ] && [ "$gpus" -ge 2 ]; then
    step switch-base-8-k1 40 train 2 configs/switch-base-8.yaml --set train.steps=60 --set moe.dispatch_chunks=1 \
      --set run.out_dir="$out/sb8-k1" "${data_args[@]}"
    step bench-moe 30 on_gpus "$gpus" "$bin" bench moe
    step bench-comm 30 on_gpus "$gpus" "$bin" bench comm
    ranks=1; list=1
    while [ $((ranks * 2)) -le "$gpus" ]; do ranks=$((ranks * 2)); list="$list,$ranks"; done
    step scaling 60 env SY_BINARY="$bin" "$root/launch/scaling.sh" configs/switch-8gpu-ep8.yaml --ranks "$list" \
      --mode weak --experts-per-rank 8 --steps 20 --bench --out "$out/scaling"
    step switch-base-8-k4 40 train 2 configs/switch-base-8.yaml --set train.steps=60 --set moe.dispatch_chunks=4 \
      --set run.out_dir="$out/sb8-k4" "${data_args[@]}"
  fi
  if [ $quick = 0 ]; then
    step selfcheck 20 "$bin" selfcheck
    step bench-ops 30 "$bin" bench ops
    step tiny 30 train 1 configs/tiny-cpu.yaml --set run.out_dir="$out/tiny" "${data_args[@]}"
    step unit-suite 90 ctest --test-dir "$build_dir" -L '^unit$' -j "$(nproc)" --timeout 120
  fi
fi

echo
[ -f "$out/compare.log" ] && { tail -12 "$out/compare.log"; echo; }
[ -f "$out/bench-switch.log" ] && { grep -E "^(model|step|done)" "$out/bench-switch.log"; echo; }
[ -f "$out/bench-switch-mma.log" ] && { echo "bench-switch, mma.sync attention:"; grep -E "^(step|done)" \
  "$out/bench-switch-mma.log" | tail -2; echo; }
[ -f "$out/profile.log" ] && { head -25 "$out/profile.log"; echo; }
[ -f "$out/bench-moe.log" ] && { cat "$out/bench-moe.log"; echo; }
[ -f "$out/bench-comm.log" ] && { cat "$out/bench-comm.log"; echo; }
for k in 1 4; do
  [ -f "$out/switch-base-8-k$k.log" ] && { echo "switch-base-8, K=$k:"; grep -E "^(step|done)" \
    "$out/switch-base-8-k$k.log" | tail -3; echo; }
done
[ -f "$out/scaling.log" ] && { tail -16 "$out/scaling.log"; echo; }
[ -f "$out/bench-ops.log" ] && { cat "$out/bench-ops.log"; echo; }
grep -hE "\[  FAILED  \] [A-Za-z]" "$out/gpu-tests.log" "$out/mpi-tests.log" 2>/dev/null | sort -u
[ $build_ok = 1 ] || tail -30 "$out/build.log"
echo "== device_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $gpus GPU(s))"
printf '%s\n' "${summary[@]}"
[ ${#skipped[@]} = 0 ] || echo "skipped for time (SY_TIME_BUDGET=$budget s): ${skipped[*]}"
mkdir -p "$dest"
# Logs, metrics, tables and plots only: profiler reports and anything large stay behind.
(cd "$out" && find . -type f -size -4M ! -name '*.ncu-rep' ! -name '*.ckpt' -print0 |
  tar -czf "$dest/device-check-logs.tar.gz" --null -T -)
echo "logs: $dest/device-check-logs.tar.gz"
