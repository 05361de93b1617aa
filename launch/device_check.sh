#!/usr/bin/env bash
# On a GPU machine: configure a Release CUDA build, run the whole suite (unit, mpi, gpu), the
# op self-check and the op benchmark, then print a summary table. Logs go to $OUT when set
# (else ./device-logs). NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
#
#   launch/device_check.sh [--no-bench] [--compare] [--quick]
#
# --compare also runs bench/compare.sh (switchyard against the PyTorch reference, eager and
# compiled) on one GPU. --quick skips the CPU suites (unit, mpi: CI runs them), the tiny and
# multi-GPU training runs and the MoE/comm benchmarks: GPU tests, op benchmark, the bench-switch
# run and its per-kernel profile only, for iterating on kernels.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Logs are written to a work folder and packed into one archive under $OUT at the end (the
# device runner returns only a few files).
dest=${OUT:-$root/device-logs}
out=$(mktemp -d /tmp/device-check.XXXXXX)
build_dir=${SY_BUILD_DIR:-$root/build-device}
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
# Every step has a time limit, so a hang still leaves the logs of the others. The optional
# runs after the suites are skipped once the whole check nears SY_TIME_BUDGET seconds, so a
# runner with a wall-clock limit still gets the summary and the log archive.
limit=${SY_STEP_TIMEOUT:-300}
budget=${SY_TIME_BUDGET:-560}
skipped_for_time=()
# have_time SECONDS NAME: true when a step of about SECONDS still fits in the budget.
have_time() {
  if [ $((SECONDS + $1)) -le "$budget" ]; then return 0; fi
  skipped_for_time+=("$2"); return 1
}
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
# GPU tests first: the CPU suites also run in CI, so they are the first to give way to time.
for label in gpu mpi unit; do
  if [ "$status_build" != ok ]; then summary[$label]="not run (build failed)"; continue; fi
  if [ $quick = 1 ] && [ "$label" != gpu ]; then summary[$label]="not run (--quick)"; continue; fi
  if [ "$label" = unit ] && ! have_time 150 "unit suite"; then summary[$label]="not run (time)"; continue; fi
  if [ "$label" = gpu ] && [ -x "$build_dir/tests/gpu_tests" ]; then
    # The GPU suite in one process: a CUDA context per test, as ctest runs it, costs about a
    # minute of device time. A crash (no gtest summary) reruns it under ctest, test by test.
    timeout "$limit" "$build_dir/tests/gpu_tests" >"$out/gtest-gpu.log" 2>&1
    ran=$(grep -E "^\[==========\] [0-9]+ tests? from .* ran" "$out/gtest-gpu.log" | tail -1)
    if [ -n "$ran" ]; then
      passed=$(grep -oE "^\[  PASSED  \] [0-9]+" "$out/gtest-gpu.log" | grep -oE "[0-9]+$" || echo 0)
      failed=$(grep -oE "^\[  FAILED  \] [0-9]+ tests?, listed below" "$out/gtest-gpu.log" | grep -oE "^[^0-9]*[0-9]+" |
        grep -oE "[0-9]+$" || echo 0)
      skipped=$(grep -oE "^\[  SKIPPED \] [0-9]+" "$out/gtest-gpu.log" | grep -oE "[0-9]+$" || echo 0)
      summary[$label]="${ran#*] }: passed ${passed:-0}, failed ${failed:-0} (skipped: ${skipped:-0})"
      continue
    fi
  fi
  jobs=$([ "$label" = gpu ] && echo 1 || echo 4)  # GPU tests one at a time: they share the device
  timeout "$limit" ctest --test-dir "$build_dir" -L "^${label}\$" -j "$jobs" --output-on-failure --timeout 240 \
    >"$out/ctest-$label.log" 2>&1
  line=$(grep -E "tests passed|No tests were found" "$out/ctest-$label.log" | tail -1)
  skipped=$(grep -c "(Skipped)" "$out/ctest-$label.log")
  summary[$label]="${line:-no result} (skipped: $skipped)"
done

selfcheck="not run"
if [ "$status_build" = ok ]; then
  timeout "$limit" "$build_dir/switchyard" selfcheck >"$out/selfcheck.log" 2>&1
  selfcheck=$(tail -1 "$out/selfcheck.log")
  if [ $run_bench = 1 ]; then
    have_time 30 "bench ops" && timeout "$limit" "$build_dir/switchyard" bench ops >"$out/bench-ops.log" 2>&1
    gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
    [ $quick = 1 ] && gpus=1
    # One MoE layer at the Switch benchmark shape, experts spread over every GPU.
    [ $quick = 1 ] || ! have_time 30 "bench moe" || timeout "$limit" mpirun --allow-run-as-root --bind-to none -np "$gpus" -x NCCL_NVLS_ENABLE \
      "$build_dir/switchyard" bench moe >"$out/bench-moe.log" 2>&1
    if [ "$gpus" -ge 2 ] && have_time 30 "bench comm"; then
      timeout "$limit" mpirun --allow-run-as-root --bind-to none -np "$gpus" -x NCCL_NVLS_ENABLE \
        "$build_dir/switchyard" bench comm >"$out/bench-comm.log" 2>&1
    fi
  fi
fi

# Training on the GPU(s): the default job in bf16, and switch-base-8 with experts over 2 GPUs.
train_status="not run"
if [ "$status_build" = ok ] && [ $run_bench = 1 ]; then
  # Real text when the shards were carried in (data/fortunes) or the corpus is installed.
  data_args=()
  if ! compgen -G "$root/data/fortunes/train_*.bin" >/dev/null && [ ! -d /usr/share/games/fortunes ]; then
    data_args=(--set data.source=synthetic --set eval.every=0)
  fi
  train_status="tiny: not run (--quick)"
  if [ $quick = 0 ] && have_time 30 "tiny"; then
    (cd "$root" && SY_BINARY="$build_dir/switchyard" timeout "$limit" launch/train.sh -n 1 configs/tiny-cpu.yaml \
      --set run.out_dir="$out/tiny" --set log.progress=false "${data_args[@]}") >"$out/train-tiny.log" 2>&1
    train_status="tiny: $(grep '^done' "$out/train-tiny.log" || echo FAILED)"
  fi
  # The single-GPU benchmark model (synthetic tokens): the throughput baseline.
  if have_time 40 "bench-switch"; then
    (cd "$root" && SY_BINARY="$build_dir/switchyard" timeout "$limit" launch/train.sh -n 1 configs/bench-switch.yaml \
      --set train.steps=20 --set log.every=5 --set run.out_dir="$out/bench-switch" --set log.progress=false) \
      >"$out/train-bench-switch.log" 2>&1
    train_status="$train_status; bench-switch: $(grep '^done' "$out/train-bench-switch.log" || echo FAILED)"
  fi
  # Where the step's time goes: device time per kernel of one bench-switch step (Nsight Compute).
  if have_time 90 "profile"; then
    OUT_DIR="$out/profile" SY_BINARY="$build_dir/switchyard" timeout "$limit" "$root/bench/profile_step.sh" \
      >"$out/profile-step.log" 2>&1 || echo "profile_step.sh failed (see profile-step.log)" >>"$out/profile-step.log"
  fi
  if [ "$gpus" -ge 2 ]; then
    # switch-base-8 with experts over 2 GPUs: whole exchanges, then pipelined in 4 chunks.
    for chunks in 1 4; do
      have_time 40 "switch-base-8 K=$chunks" || continue
      (cd "$root" && SY_BINARY="$build_dir/switchyard" timeout "$limit" launch/train.sh -n 2 configs/switch-base-8.yaml \
        --set train.steps=60 --set moe.dispatch_chunks=$chunks --set run.out_dir="$out/sb8-k$chunks" \
        --set log.progress=false "${data_args[@]}") >"$out/train-switch-base-8-k$chunks.log" 2>&1
      train_status="$train_status; switch-base-8 K=$chunks: $(grep '^done' "$out/train-switch-base-8-k$chunks.log" ||
        echo FAILED)"
    done
    # Weak scaling up to every GPU of the machine (1, 2, 4, 8), each run with its MoE layer
    # benchmark and the raw all-to-all at the layer's message size.
    ranks=1; list=1
    while [ $((ranks * 2)) -le "$gpus" ]; do ranks=$((ranks * 2)); list="$list,$ranks"; done
    have_time 120 "scaling sweep" && (cd "$root" && SY_BINARY="$build_dir/switchyard" timeout "$limit" launch/scaling.sh configs/switch-8gpu-ep8.yaml \
      --ranks "$list" --mode weak --experts-per-rank 8 --steps 20 --bench --out "$out/scaling") \
      >"$out/scaling.log" 2>&1
  fi
fi

if [ "$status_build" = ok ] && [ $run_compare = 1 ] && have_time 120 "compare"; then
  (cd "$root" && OUT_DIR="$out/compare" SY_BINARY="$build_dir/switchyard" timeout 420 bench/compare.sh) \
    >"$out/compare.log" 2>&1
fi

echo
[ -f "$out/selfcheck.log" ] && cat "$out/selfcheck.log"
[ -f "$out/bench-ops.log" ] && { echo; cat "$out/bench-ops.log"; }
[ -f "$out/bench-moe.log" ] && { echo; cat "$out/bench-moe.log"; }
[ -f "$out/train-bench-switch.log" ] && { echo; grep -E "^(model|step|done)" "$out/train-bench-switch.log"; }
[ -f "$out/profile-step.log" ] && { echo; head -25 "$out/profile-step.log"; tail -1 "$out/profile-step.log"; }
[ -f "$out/bench-comm.log" ] && { echo; cat "$out/bench-comm.log"; }
[ -f "$out/compare.log" ] && { echo; tail -12 "$out/compare.log"; }
for k in 1 4; do
  [ -f "$out/train-switch-base-8-k$k.log" ] && { echo; echo "switch-base-8, K=$k:"; grep -E "^(step|done)" \
    "$out/train-switch-base-8-k$k.log" | tail -3; }
done
[ -f "$out/scaling.log" ] && { echo; tail -16 "$out/scaling.log"; }
grep -E "^\[  FAILED  \] [A-Za-z]" "$out/gtest-gpu.log" 2>/dev/null | sort -u
for label in unit mpi gpu; do
  grep -E "^\s+[0-9]+ - .*\((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)" "$out/ctest-$label.log" 2>/dev/null
done
echo
echo "== device_check summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf "%-10s %s\n" "build" "$status_build"
for label in unit mpi gpu; do printf "%-10s %s\n" "$label" "${summary[$label]}"; done
printf "%-10s %s\n" "selfcheck" "$selfcheck"
printf "%-10s %s\n" "train" "$train_status"
[ ${#skipped_for_time[@]} = 0 ] || printf "%-10s %s\n" "skipped" "for time (SY_TIME_BUDGET=$budget s): ${skipped_for_time[*]}"
mkdir -p "$dest"
tar -czf "$dest/device-check-logs.tar.gz" -C "$out" .
echo "logs: $dest/device-check-logs.tar.gz"
